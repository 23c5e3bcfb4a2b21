{{/* What the notify processes connect to; the library's env templates read it (common.uses). */}}
{{- define "notify.uses" -}}
settings: true
database: true
redis: false
rabbitmq: true
cacheRedis: false
internalAuth: false
upstreams: []
{{- end -}}
