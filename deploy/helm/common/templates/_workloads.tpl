{{/*
Deployment, Service, ServiceAccount and PodDisruptionBudget.
*/}}

{{/* (dict "root" $ "name" "api" "component" $c "kind" .. "replicas" n-or-nil "strategy" dict + podTemplate args). */}}
{{- define "common.deployment" -}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "common.names.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
spec:
  {{- /* No replicas while an autoscaler owns the count, so an upgrade never resets it. */}}
  {{- if not (kindIs "invalid" .replicas) }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "common.labels.selector" . | nindent 6 }}
  strategy:
    {{- toYaml .strategy | nindent 4 }}
  template:
    {{- include "common.podTemplate" . | nindent 4 }}
{{- end -}}

{{/* A ClusterIP Service: (dict "root" $ "name" "api" "suffix" "" "port" 80 "targetPort" "http" "portName" "http"). */}}
{{- define "common.service" -}}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "common.names.component" (dict "root" .root "name" (printf "%s%s" .name (.suffix | default ""))) }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "common.labels.selector" . | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port }}
      targetPort: {{ .targetPort }}
      protocol: TCP
{{- end -}}

{{- define "common.serviceaccount" -}}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "common.names.serviceAccount" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.labels.standard" (dict "root" . "name" "") | nindent 4 }}
automountServiceAccountToken: false
{{- end -}}

{{/* (dict "root" $ "name" .. "component" $c): maxUnavailable from the component's pdb values. */}}
{{- define "common.pdb" -}}
{{- if .component.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "common.names.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
spec:
  maxUnavailable: {{ .component.pdb.maxUnavailable }}
  {{- /* Let evictions proceed for pods that never became ready (a broken rollout must not block drains). */}}
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "common.labels.selector" . | nindent 6 }}
{{- end }}
{{- end -}}
