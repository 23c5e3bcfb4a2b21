{{/* What the web processes connect to; the library's env templates read it (common.uses). */}}
{{- define "web.uses" -}}
settings: false
database: false
redis: false
rabbitmq: false
cacheRedis: false
internalAuth: false
upstreams: []
{{- end -}}
