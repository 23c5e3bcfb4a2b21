{{/*
NetworkPolicy: ingress only from the expected callers. A component's port admits
- the Parley components its values list in networkPolicy.allowFrom (same namespace, matched by labels),
- the ingress controller's pods (global.networkPolicy.ingressControllerPeers) when it is public,
- the metrics scrapers (global.networkPolicy.metricsPeers), since /metrics is served on that port,
- networkPolicy.extraFrom peers as given.
Egress stays open: the managed PostgreSQL/Redis/RabbitMQ, DNS and model providers sit outside the
cluster at addresses these charts cannot know.
*/}}

{{/* (dict "root" $ "name" .. "component" $c "port" (dict "name" .. "number" ..)). */}}
{{- define "common.networkpolicy" -}}
{{- $np := .root.Values.global.networkPolicy -}}
{{- $c := .component -}}
{{- if $np.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "common.names.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "common.labels.selector" . | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    - ports:
        - port: {{ .port.number }}
          protocol: TCP
      from:
        {{- range $c.networkPolicy.allowFrom }}
        - podSelector:
            matchLabels:
              {{- include "common.labels.peer" . | nindent 14 }}
        {{- end }}
        {{- if $c.networkPolicy.public }}
        {{- with $np.ingressControllerPeers }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- end }}
        {{- with $np.metricsPeers }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $c.networkPolicy.extraFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}
{{- end -}}

{{/* Prometheus Operator ServiceMonitor for a component's Service. */}}
{{- define "common.servicemonitor" -}}
{{- $sm := .root.Values.global.serviceMonitor -}}
{{- if $sm.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "common.names.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "common.labels.selector" . | nindent 6 }}
  namespaceSelector:
    matchNames: [{{ .root.Release.Namespace | quote }}]
  endpoints:
    - port: {{ .portName }}
      path: /metrics
      interval: {{ $sm.interval }}
      scrapeTimeout: {{ $sm.scrapeTimeout }}
{{- end }}
{{- end -}}
