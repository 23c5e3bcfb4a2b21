{{/* What the webhooks processes connect to; the library's env templates read it (common.uses). */}}
{{- define "webhooks.uses" -}}
settings: true
database: true
redis: true
rabbitmq: true
cacheRedis: false
internalAuth: true
upstreams: []
{{- end -}}
