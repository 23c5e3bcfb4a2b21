{{/* What the usage processes are and reach: settings = reads PARLEY_* settings (ConfigMap), metrics = serves /metrics,
then the connections it gets. The library's env and pod templates read it (common.uses). */}}
{{- define "usage.uses" -}}
settings: true
metrics: true
database: true
redis: true
rabbitmq: true
cacheRedis: false
internalAuth: true
upstreams: []
{{- end -}}
