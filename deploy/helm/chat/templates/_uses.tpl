{{/* What the chat processes are and reach: settings = reads PARLEY_* settings (ConfigMap), metrics = serves /metrics,
then the connections it gets. The library's env and pod templates read it (common.uses). */}}
{{- define "chat.uses" -}}
settings: true
metrics: true
database: true
redis: true
rabbitmq: true
cacheRedis: true
internalAuth: true
upstreams: []
{{- end -}}
