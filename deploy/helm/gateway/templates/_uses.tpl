{{/* What the gateway processes connect to; the library's env templates read it (common.uses). */}}
{{- define "gateway.uses" -}}
settings: true
database: true
redis: true
rabbitmq: true
cacheRedis: false
internalAuth: false
upstreams: [chat, usage, webhooks]
{{- end -}}
