{{/* What the notify processes are and reach: settings = reads PARLEY_* settings (ConfigMap), metrics = serves /metrics,
then the connections it gets. The library's env and pod templates read it (common.uses). */}}
{{- define "notify.uses" -}}
settings: true
metrics: true
database: true
redis: false
rabbitmq: true
cacheRedis: false
internalAuth: false
upstreams: []
{{- end -}}
