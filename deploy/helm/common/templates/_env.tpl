{{/*
Settings. Every Parley process reads PARLEY_* environment variables (parley_common.settings).

- Plain settings shared by a chart's processes live in one ConfigMap (common.configmap), read with
  envFrom; pods carry its checksum so a change rolls them.
- Secrets are never rendered by these charts: every secret value comes from an existing Secret through a
  secretKeyRef. Connection URLs are composed from the region's plain host names and a password variable
  ($(PARLEY_DATABASE_PASSWORD) and so on), which Kubernetes expands when it starts the container.
- The migration Job is a pre-install hook: it runs before the ConfigMap exists, so it receives the same
  settings inline (common.env.settings).
*/}}

{{/* What this chart's processes connect to, from the chart's own "<chart>.uses" template. */}}
{{- define "common.uses" -}}
{{- include (printf "%s.uses" .Chart.Name) . -}}
{{- end -}}

{{/* A secretKeyRef env entry: (dict "name" "PARLEY_X" "ref" (dict "name" .. "key" .. "optional" ..)). */}}
{{- define "common.env.secret" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name | quote }}
      key: {{ .ref.key | quote }}
      {{- if .ref.optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* The plain settings map (name -> value) shared by every process of the chart. */}}
{{- define "common.env.settingsMap" -}}
{{- $g := .Values.global -}}
{{- $uses := include "common.uses" . | fromYaml -}}
{{- $env := dict
  "PARLEY_ENV" $g.env
  "PARLEY_REGION" $g.region
  "PARLEY_LOG_LEVEL" $g.logLevel
  "PARLEY_LOG_FORMAT" $g.logFormat
  "PARLEY_OTEL_EXPORTER" $g.otel.exporter
-}}
{{- if $g.otel.endpoint -}}
{{- $_ := set $env "PARLEY_OTEL_ENDPOINT" $g.otel.endpoint -}}
{{- end -}}
{{- if $uses.redis -}}
{{- $_ := set $env "PARLEY_REDIS_KEY_PREFIX" $g.redis.keyPrefix -}}
{{- end -}}
{{- if $uses.internalAuth -}}
{{- $_ := set $env "PARLEY_INTERNAL_JWKS_URL" (printf "%s/.well-known/jwks.json" (include "common.names.peerUrl" (dict "root" . "chart" "gateway"))) -}}
{{- end -}}
{{- range $uses.upstreams -}}
{{- $_ := set $env (printf "PARLEY_%s_URL" (upper .)) (include "common.names.peerUrl" (dict "root" $ "chart" .)) -}}
{{- end -}}
{{- range $name, $value := .Values.config -}}
{{- $_ := set $env $name (toString $value) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* "host:port" of the database for the app's traffic (PgBouncer when enabled) or, with migration=true,
for migrations, which go straight to PostgreSQL unless pgbouncer.migrationsThroughPgbouncer. */}}
{{- define "common.env.databaseAddress" -}}
{{- $db := .root.Values.global.database -}}
{{- $viaBouncer := and $db.pgbouncer.enabled (or (not .migration) $db.pgbouncer.migrationsThroughPgbouncer) -}}
{{- if $viaBouncer -}}
{{- printf "%s:%d" (required "global.database.pgbouncer.host is required when PgBouncer is enabled" $db.pgbouncer.host) (int $db.pgbouncer.port) -}}
{{- else -}}
{{- printf "%s:%d" (required "global.database.host is required" $db.host) (int $db.port) -}}
{{- end -}}
{{- end -}}

{{/* A postgresql:// URL: (dict "root" $ "address" "host:port"). */}}
{{- define "common.env.databaseUrl" -}}
{{- $db := .root.Values.global.database -}}
{{- $auth := $db.user -}}
{{- if $db.passwordSecret.name -}}
{{- $auth = printf "%s:$(PARLEY_DATABASE_PASSWORD)" $db.user -}}
{{- end -}}
{{- printf "postgresql://%s@%s/%s?sslmode=%s" $auth .address $db.name $db.sslmode -}}
{{- end -}}

{{/* Connection env entries (secrets and composed URLs): (dict "root" $ "migration" bool). */}}
{{- define "common.env.connections" -}}
{{- $root := .root -}}
{{- $g := $root.Values.global -}}
{{- $uses := include "common.uses" $root | fromYaml -}}
{{- if $uses.database }}
{{- if $g.database.passwordSecret.name }}
{{ include "common.env.secret" (dict "name" "PARLEY_DATABASE_PASSWORD" "ref" $g.database.passwordSecret) }}
{{- end }}
- name: PARLEY_DATABASE_URL
  value: {{ include "common.env.databaseUrl" (dict "root" $root "address" (include "common.env.databaseAddress" (dict "root" $root "migration" .migration))) | quote }}
{{- if and $g.database.readReplica.host (not .migration) }}
- name: PARLEY_DATABASE_READ_URL
  value: {{ include "common.env.databaseUrl" (dict "root" $root "address" (printf "%s:%d" $g.database.readReplica.host (int $g.database.readReplica.port))) | quote }}
{{- end }}
{{- end }}
{{- if $uses.redis }}
{{- include "common.env.redis" (dict "prefix" "PARLEY_REDIS" "redis" $g.redis) }}
{{- end }}
{{- if and $uses.cacheRedis $g.cacheRedis.host }}
{{- include "common.env.redis" (dict "prefix" "PARLEY_CACHE_REDIS" "redis" $g.cacheRedis) }}
{{- end }}
{{- if $uses.rabbitmq }}
{{- $mq := $g.rabbitmq }}
{{- $auth := $mq.user }}
{{- if $mq.passwordSecret.name }}
{{ include "common.env.secret" (dict "name" "PARLEY_RABBITMQ_PASSWORD" "ref" $mq.passwordSecret) }}
{{- $auth = printf "%s:$(PARLEY_RABBITMQ_PASSWORD)" $mq.user }}
{{- end }}
- name: PARLEY_RABBITMQ_URL
  value: {{ printf "%s://%s@%s:%d/%s" $mq.scheme $auth (required "global.rabbitmq.host is required" $mq.host) (int $mq.port) ($mq.vhost | urlquery) | quote }}
{{- end }}
{{- range $name, $ref := $root.Values.secretEnv }}
{{ include "common.env.secret" (dict "name" $name "ref" $ref) }}
{{- end }}
{{- end -}}

{{/* PARLEY_<X>_URL for a Redis: (dict "prefix" "PARLEY_REDIS" "redis" $values). */}}
{{- define "common.env.redis" -}}
{{- $r := .redis -}}
{{- $auth := "" -}}
{{- if $r.passwordSecret.name }}
{{ include "common.env.secret" (dict "name" (printf "%s_PASSWORD" .prefix) "ref" $r.passwordSecret) }}
{{- $auth = printf ":$(%s_PASSWORD)@" .prefix -}}
{{- end }}
- name: {{ printf "%s_URL" .prefix }}
  value: {{ printf "%s://%s%s:%d/%d" $r.scheme $auth (required "a Redis host is required" $r.host) (int $r.port) (int $r.db) | quote }}
{{- end -}}

{{/* Every setting inline (the migration Job, which runs before the ConfigMap exists). */}}
{{- define "common.env.settings" -}}
{{- range $name, $value := (include "common.env.settingsMap" . | fromYaml) }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* The settings ConfigMap. */}}
{{- define "common.configmap" -}}
{{- $uses := include "common.uses" . | fromYaml -}}
{{- if $uses.settings }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "common.names.config" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.labels.standard" (dict "root" . "name" "") | nindent 4 }}
data:
  {{- range $name, $value := (include "common.env.settingsMap" . | fromYaml) }}
  {{ $name }}: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* sha256 of the settings, for the pod annotation that rolls pods when settings change. */}}
{{- define "common.configChecksum" -}}
{{- include "common.env.settingsMap" . | sha256sum -}}
{{- end -}}
