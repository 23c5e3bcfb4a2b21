{{/*
Autoscaling. A Deployment has at most one autoscaler: HTTP components an HPA; workers a KEDA
ScaledObject on their RabbitMQ queue when global.keda.enabled, else (only then) an HPA on CPU. KEDA
creates and owns its own HPA for the ScaledObject, so an HPA of ours beside it would fight it.
*/}}

{{/* Which autoscaler owns a component's replica count: "keda", "hpa" or "" (fixed replicas). */}}
{{- define "common.autoscaler" -}}
{{- if and (eq .kind "worker") .root.Values.global.keda.enabled .component.keda.enabled -}}
keda
{{- else if and .component.autoscaling .component.autoscaling.enabled -}}
hpa
{{- end -}}
{{- end -}}

{{/* autoscaling/v2 HPA on CPU, optionally memory and one Pods metric (e.g. from prometheus-adapter). */}}
{{- define "common.hpa" -}}
{{- $a := .component.autoscaling -}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "common.names.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "common.names.component" . }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilizationPercentage }}
    {{- with $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- if $a.podsMetric.name }}
    - type: Pods
      pods:
        metric:
          name: {{ $a.podsMetric.name }}
        target:
          type: AverageValue
          averageValue: {{ $a.podsMetric.averageValue | quote }}
    {{- end }}
  behavior:
    scaleUp:
      stabilizationWindowSeconds: 0
      selectPolicy: Max
      policies:
        - type: Percent
          value: 100
          periodSeconds: 30
        - type: Pods
          value: 4
          periodSeconds: 30
    {{- /* Slow scale-down: a pod removed ends its open SSE streams, so shed one pod at a time, after a long calm. */}}
    scaleDown:
      stabilizationWindowSeconds: {{ $a.scaleDownStabilizationSeconds }}
      selectPolicy: Min
      policies:
        - type: Pods
          value: 1
          periodSeconds: {{ $a.scaleDownPeriodSeconds }}
{{- end -}}

{{/* KEDA ScaledObject on the worker's queue, plus the TriggerAuthentication that reads the RabbitMQ
management URL from an existing Secret. Counts ready + unacknowledged messages (management API), so a
queue whose messages are all in flight on busy workers does not look empty and scale them away. */}}
{{- define "common.scaledobject" -}}
{{- $k := .component.keda -}}
{{- $mq := .root.Values.global.rabbitmq -}}
{{- $auth := include "common.names.component" (dict "root" .root "name" (printf "%s-rabbitmq" .name)) -}}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata:
  name: {{ $auth }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
spec:
  secretTargetRef:
    - parameter: host
      name: {{ required "global.rabbitmq.managementSecret.name is required when KEDA is enabled" $mq.managementSecret.name | quote }}
      key: {{ $mq.managementSecret.key | quote }}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: {{ include "common.names.component" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "common.labels.standard" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "common.names.component" . }}
  minReplicaCount: {{ $k.minReplicas }}
  maxReplicaCount: {{ $k.maxReplicas }}
  pollingInterval: {{ $k.pollingInterval }}
  cooldownPeriod: {{ $k.cooldownPeriod }}
  {{- if $k.fallbackReplicas }}
  fallback:
    failureThreshold: 3
    replicas: {{ $k.fallbackReplicas }}
  {{- end }}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: {{ $k.scaleDownStabilizationSeconds }}
          policies:
            - type: Pods
              value: 1
              periodSeconds: 60
  triggers:
    - type: rabbitmq
      metadata:
        protocol: http
        mode: QueueLength
        queueName: {{ .component.queue | quote }}
        value: {{ $k.queueLength | quote }}
        activationValue: {{ $k.activationQueueLength | quote }}
        excludeUnacknowledged: "false"
      authenticationRef:
        name: {{ $auth }}
{{- end -}}
