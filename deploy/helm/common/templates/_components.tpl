{{/*
Components: one named template per kind of Parley process. A service chart's template is one line, e.g.
  {{ include "common.component.worker" (dict "root" . "name" "worker") }}
and renders everything that process needs from .Values.components.<name>.
*/}}

{{- define "common.component.values" -}}
{{- $c := index .root.Values.components .name -}}
{{- if not $c -}}
{{- fail (printf "components.%s is missing from the values" .name) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* HTTP API (uvicorn) or the nginx web server: Deployment, Service, HPA, PDB, NetworkPolicy,
ServiceMonitor. SIGTERM handling: preStop sleeps while endpoints drop the pod, then the server gets
gracefulShutdownSeconds to finish open requests and SSE streams; the grace period covers both. */}}
{{- define "common.component.http" -}}
{{- $c := include "common.component.values" . | fromYaml -}}
{{- if $c.enabled }}
{{- $args := dict "root" .root "name" .name "component" $c "kind" "http" -}}
{{- $http := $c.http -}}
{{- $grace := add $http.preStopSeconds $http.gracefulShutdownSeconds $http.shutdownMarginSeconds -}}
{{- $env := list
  (dict "name" "PARLEY_HTTP_HOST" "value" "0.0.0.0")
  (dict "name" "PARLEY_HTTP_PORT" "value" (toString $c.port))
  (dict "name" "PARLEY_HTTP_WORKERS" "value" (toString $http.workers))
  (dict "name" "PARLEY_HTTP_GRACEFUL_SHUTDOWN" "value" (toString $http.gracefulShutdownSeconds))
-}}
{{- $uses := include "common.uses" .root | fromYaml -}}
{{- if not $uses.settings -}}
{{- $env = list -}}
{{- end -}}
{{- $autoscaler := include "common.autoscaler" $args -}}
{{- $_ := set $args "replicas" (ternary nil $c.replicas (ne $autoscaler "")) -}}
{{- $_ := set $args "strategy" (dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" "25%" "maxUnavailable" 0)) -}}
{{- $_ := set $args "grace" $grace -}}
{{- $_ := set $args "env" $env -}}
{{- $_ := set $args "port" (dict "name" "http" "number" $c.port) -}}
{{- $_ := set $args "preStopSeconds" $http.preStopSeconds -}}
{{ include "common.deployment" $args }}
{{ include "common.service" (dict "root" .root "name" .name "port" 80 "targetPort" "http" "portName" "http") }}
{{- if eq $autoscaler "hpa" }}
{{ include "common.hpa" $args }}
{{- end }}
{{ include "common.pdb" $args }}
{{ include "common.networkpolicy" $args }}
{{- if $uses.metrics }}
{{ include "common.servicemonitor" (merge (dict "portName" "http") $args) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Metrics port of non-HTTP processes (PARLEY_METRICS_PORT: /metrics, /livez, /readyz). */}}
{{- define "common.metricsPort" -}}
{{- .root.Values.global.metricsPort -}}
{{- end -}}

{{/* A metrics Service + ServiceMonitor for a non-HTTP component, only when ServiceMonitors are on. */}}
{{- define "common.metricsService" -}}
{{- if .root.Values.global.serviceMonitor.enabled }}
{{ include "common.service" (dict "root" .root "name" .name "suffix" "-metrics" "port" (int (include "common.metricsPort" .)) "targetPort" "metrics" "portName" "metrics") }}
{{ include "common.servicemonitor" (merge (dict "portName" "metrics") .) }}
{{- end }}
{{- end -}}

{{/* Celery worker: KEDA ScaledObject (or, with KEDA off, an HPA), PDB, NetworkPolicy. Its grace period
outlasts the longest task, so a scale-down's SIGTERM (Celery's warm shutdown) lets running tasks finish;
with acks_late, a task killed anyway is redelivered. */}}
{{- define "common.component.worker" -}}
{{- $c := include "common.component.values" . | fromYaml -}}
{{- if $c.enabled }}
{{- $args := dict "root" .root "name" .name "component" $c "kind" "worker" -}}
{{- $port := int (include "common.metricsPort" .) -}}
{{- $grace := add $c.taskTimeLimitSeconds $c.shutdownMarginSeconds -}}
{{- if le (int $grace) (int $c.taskTimeLimitSeconds) -}}
{{- fail (printf "components.%s: the grace period (%d s) must exceed the task time limit (%d s)" .name (int $grace) (int $c.taskTimeLimitSeconds)) -}}
{{- end -}}
{{- $env := list
  (dict "name" "PARLEY_METRICS_PORT" "value" (toString $port))
  (dict "name" "PARLEY_WORKER_CONCURRENCY" "value" (toString $c.concurrency))
  (dict "name" "PARLEY_TASK_TIME_LIMIT" "value" (toString $c.taskTimeLimitSeconds))
-}}
{{- $autoscaler := include "common.autoscaler" $args -}}
{{- $_ := set $args "replicas" (ternary nil $c.replicas (ne $autoscaler "")) -}}
{{- $_ := set $args "strategy" (dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" "25%" "maxUnavailable" 0)) -}}
{{- $_ := set $args "grace" $grace -}}
{{- $_ := set $args "env" $env -}}
{{- $_ := set $args "port" (dict "name" "metrics" "number" $port) -}}
{{ include "common.deployment" $args }}
{{- if eq $autoscaler "keda" }}
{{ include "common.scaledobject" $args }}
{{- else if eq $autoscaler "hpa" }}
{{ include "common.hpa" $args }}
{{- end }}
{{ include "common.pdb" $args }}
{{ include "common.networkpolicy" $args }}
{{ include "common.metricsService" $args }}
{{- end }}
{{- end -}}

{{/* Celery beat: exactly one replica, replaced with Recreate so two never run at once (two beats send
every periodic task twice). No autoscaler, no PDB. */}}
{{- define "common.component.beat" -}}
{{- $c := include "common.component.values" . | fromYaml -}}
{{- if $c.enabled }}
{{- $args := dict "root" .root "name" .name "component" $c "kind" "beat" -}}
{{- $port := int (include "common.metricsPort" .) -}}
{{- $_ := set $args "replicas" 1 -}}
{{- $_ := set $args "strategy" (dict "type" "Recreate") -}}
{{- $_ := set $args "grace" 30 -}}
{{- $_ := set $args "env" (list (dict "name" "PARLEY_METRICS_PORT" "value" (toString $port))) -}}
{{- $_ := set $args "port" (dict "name" "metrics" "number" $port) -}}
{{ include "common.deployment" $args }}
{{ include "common.networkpolicy" $args }}
{{ include "common.metricsService" $args }}
{{- end }}
{{- end -}}

{{/* Outbox relay: fixed replicas (FOR UPDATE SKIP LOCKED lets any number run side by side), PDB. */}}
{{- define "common.component.relay" -}}
{{- $c := include "common.component.values" . | fromYaml -}}
{{- if $c.enabled }}
{{- $args := dict "root" .root "name" .name "component" $c "kind" "relay" -}}
{{- $port := int (include "common.metricsPort" .) -}}
{{- $_ := set $args "replicas" $c.replicas -}}
{{- $_ := set $args "strategy" (dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" 1 "maxUnavailable" 0)) -}}
{{- $_ := set $args "grace" 30 -}}
{{- $_ := set $args "env" (list (dict "name" "PARLEY_METRICS_PORT" "value" (toString $port))) -}}
{{- $_ := set $args "port" (dict "name" "metrics" "number" $port) -}}
{{ include "common.deployment" $args }}
{{ include "common.pdb" $args }}
{{ include "common.networkpolicy" $args }}
{{ include "common.metricsService" $args }}
{{- end }}
{{- end -}}
