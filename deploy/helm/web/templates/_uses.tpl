{{/* What the web processes are and reach: settings = reads PARLEY_* settings (ConfigMap), metrics = serves /metrics,
then the connections it gets. The library's env and pod templates read it (common.uses). */}}
{{- define "web.uses" -}}
settings: false
metrics: false
database: false
redis: false
rabbitmq: false
cacheRedis: false
internalAuth: false
upstreams: []
{{- end -}}
