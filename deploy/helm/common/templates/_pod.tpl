{{/*
The pod every Parley process runs in: non-root, read-only root filesystem with an emptyDir at /tmp, no
capabilities, no service-account token, RuntimeDefault seccomp, requests and limits, spread across
zones and nodes.

Takes (dict "root" $ "name" "worker" "component" $values "kind" "http|worker|beat|relay|job"
"grace" seconds "env" list-of-extra-env "port" (dict "name" .. "number" ..) "initContainers" list).
*/}}

{{- define "common.image" -}}
{{- $g := .Values.global.image -}}
{{- $repository := .Values.image.repository | default (printf "%s/parley-%s" $g.registry .Chart.Name) -}}
{{- $tag := .Values.image.tag | default $g.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "common.containerSecurityContext" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "common.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* An HTTP GET probe on a named port: (dict "path" "/livez" "port" "http" "defaults" dict "override" dict). */}}
{{- define "common.probe" -}}
{{- $p := merge (deepCopy (.override | default dict)) .defaults -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ $p.periodSeconds }}
timeoutSeconds: {{ $p.timeoutSeconds }}
failureThreshold: {{ $p.failureThreshold }}
{{- if $p.initialDelaySeconds }}
initialDelaySeconds: {{ $p.initialDelaySeconds }}
{{- end }}
{{- end -}}

{{/* Startup (slow imports, first connections), liveness (the process answers) and readiness (its
dependencies answer) probes, on the component's HTTP port or its metrics port. */}}
{{- define "common.probes" -}}
{{- $probes := .component.probes | default dict -}}
startupProbe:
  {{- include "common.probe" (dict "path" "/livez" "port" .portName "defaults" (dict "periodSeconds" 2 "timeoutSeconds" 2 "failureThreshold" 45) "override" $probes.startup) | nindent 2 }}
livenessProbe:
  {{- include "common.probe" (dict "path" "/livez" "port" .portName "defaults" (dict "periodSeconds" 10 "timeoutSeconds" 3 "failureThreshold" 3) "override" $probes.liveness) | nindent 2 }}
readinessProbe:
  {{- include "common.probe" (dict "path" "/readyz" "port" .portName "defaults" (dict "periodSeconds" 5 "timeoutSeconds" 3 "failureThreshold" 2) "override" $probes.readiness) | nindent 2 }}
{{- end -}}

{{- define "common.topologySpread" -}}
{{- $spread := .root.Values.global.topologySpread -}}
{{- if $spread.enabled }}
{{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
- maxSkew: {{ $spread.maxSkew }}
  topologyKey: {{ $key }}
  whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "common.labels.selector" (dict "root" $.root "name" $.name) | nindent 6 }}
  {{- if ne $.kind "job" }}
  matchLabelKeys: ["pod-template-hash"]
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The pod template (metadata + spec). */}}
{{- define "common.podTemplate" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $uses := include "common.uses" $root | fromYaml -}}
metadata:
  labels:
    {{- include "common.labels.pod" (dict "root" $root "name" .name "component" $c) | nindent 4 }}
  {{- $annotations := dict }}
  {{- if $uses.settings }}
  {{- $_ := set $annotations "checksum/config" (include "common.configChecksum" $root) }}
  {{- end }}
  {{- if and .port $uses.metrics }}
  {{- $_ := set $annotations "prometheus.io/scrape" "true" }}
  {{- $_ := set $annotations "prometheus.io/port" (toString .port.number) }}
  {{- $_ := set $annotations "prometheus.io/path" "/metrics" }}
  {{- end }}
  {{- with (merge $annotations ($c.podAnnotations | default dict)) }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- if ne .kind "job" }}
  serviceAccountName: {{ include "common.names.serviceAccount" $root }}
  {{- end }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $root.Values.global.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . | quote }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- include "common.podSecurityContext" $root | nindent 4 }}
  terminationGracePeriodSeconds: {{ .grace }}
  {{- if eq .kind "job" }}
  restartPolicy: Never
  {{- end }}
  {{- with $root.Values.global.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- $spread := include "common.topologySpread" . }}
  {{- if $spread }}
  topologySpreadConstraints:
    {{- $spread | trim | nindent 4 }}
  {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .initContainers }}
  initContainers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .name }}
      image: {{ include "common.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.global.image.pullPolicy }}
      {{- with $c.command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .port }}
      ports:
        - name: {{ .port.name }}
          containerPort: {{ .port.number }}
          protocol: TCP
      {{- end }}
      {{- if and $uses.settings (ne .kind "job") }}
      envFrom:
        - configMapRef:
            name: {{ include "common.names.config" $root }}
      {{- end }}
      {{- $env := list }}
      {{- if and $uses.settings (eq .kind "job") }}
      {{- $env = concat $env (include "common.env.settings" $root | fromYamlArray) }}
      {{- end }}
      {{- if $uses.settings }}
      {{- $env = concat $env (include "common.env.connections" (dict "root" $root "migration" (eq .kind "job")) | fromYamlArray) }}
      {{- end }}
      {{- $env = concat $env (.env | default list) }}
      {{- range $name, $value := $c.env }}
      {{- $env = append $env (dict "name" $name "value" (toString $value)) }}
      {{- end }}
      {{- with $env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- include "common.containerSecurityContext" $root | nindent 8 }}
      {{- if .port }}
      {{- include "common.probes" (dict "component" $c "portName" .port.name) | nindent 6 }}
      {{- end }}
      {{- with .preStopSeconds }}
      lifecycle:
        preStop:
          exec:
            command: ["sleep", {{ . | quote }}]
      {{- end }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: {{ $root.Values.global.tmpSizeLimit }}
{{- end -}}
