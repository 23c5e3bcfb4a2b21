{{/* What the chat processes connect to; the library's env templates read it (common.uses). */}}
{{- define "chat.uses" -}}
settings: true
database: true
redis: true
rabbitmq: true
cacheRedis: true
internalAuth: true
upstreams: []
{{- end -}}
