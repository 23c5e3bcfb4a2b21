{{/*
Migrations: a Job run by Helm before install and before every upgrade (a pre-install/pre-upgrade hook),
so no pod of the new release starts before its schema exists. Its init container waits for PostgreSQL
(python -m parley_common.db.wait); then the service's parley-<svc>-migrate runs Alembic (which takes a
transaction-scoped advisory lock, so concurrent runs take turns). A failure fails the Job, the hook and
so the release: the Deployments keep their old pods. A failed Job is kept for its logs until the next
attempt replaces it. It connects straight to PostgreSQL, not through PgBouncer, unless
global.database.pgbouncer.migrationsThroughPgbouncer says otherwise.
*/}}
{{- define "common.migrations" -}}
{{- $m := .Values.migrations -}}
{{- if $m.enabled }}
{{- $root := . -}}
{{- $name := include "common.names.component" (dict "root" . "name" "migrate") -}}
{{- $container := include "common.podTemplate" (dict "root" . "name" "migrate" "component" $m "kind" "job" "grace" 30) | fromYaml -}}
{{- $main := index $container.spec.containers 0 -}}
{{- $wait := dict
  "name" "wait-for-database"
  "image" $main.image
  "imagePullPolicy" $main.imagePullPolicy
  "command" (list "python" "-m" "parley_common.db.wait" "--timeout" (toString $m.waitTimeoutSeconds) "--service" .Chart.Name)
  "env" $main.env
  "resources" $main.resources
  "securityContext" $main.securityContext
  "volumeMounts" $main.volumeMounts
-}}
{{- $pod := include "common.podTemplate" (dict "root" . "name" "migrate" "component" $m "kind" "job" "grace" 30 "initContainers" (list $wait)) | fromYaml -}}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ $name }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.labels.standard" (dict "root" . "name" "migrate") | nindent 4 }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "-10"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ $m.backoffLimit }}
  activeDeadlineSeconds: {{ $m.activeDeadlineSeconds }}
  template:
    {{- toYaml $pod | nindent 4 }}
{{- end }}
{{- end -}}
