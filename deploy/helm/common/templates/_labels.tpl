{{/*
Labels. Selectors carry only name, instance and component: they are immutable on a Deployment, so a
custom label in a selector would make the next upgrade that changes it fail (bitnami's
common.labels.matchLabels makes the same choice). Custom labels go on object and pod metadata only, and
never replace a standard key.
*/}}

{{/* Selector labels: (dict "root" $ "name" "api"); "name" may be empty for chart-wide objects. */}}
{{- define "common.labels.selectorDict" -}}
{{- $labels := dict "app.kubernetes.io/name" (include "common.names.name" .root) "app.kubernetes.io/instance" .root.Release.Name -}}
{{- if .name -}}
{{- $_ := set $labels "app.kubernetes.io/component" .name -}}
{{- end -}}
{{- toYaml $labels -}}
{{- end -}}

{{- define "common.labels.selector" -}}
{{- include "common.labels.selectorDict" . -}}
{{- end -}}

{{/* Standard labels: selector labels plus version, chart, region and global.commonLabels. */}}
{{- define "common.labels.standard" -}}
{{- $labels := include "common.labels.selectorDict" . | fromYaml -}}
{{- $_ := set $labels "app.kubernetes.io/part-of" "parley" -}}
{{- $_ := set $labels "app.kubernetes.io/managed-by" .root.Release.Service -}}
{{- $_ := set $labels "app.kubernetes.io/version" (.root.Values.image.tag | default .root.Values.global.image.tag | default .root.Chart.AppVersion | trunc 63 | trimSuffix "-") -}}
{{- $_ := set $labels "helm.sh/chart" (include "common.names.chart" .root) -}}
{{- $_ := set $labels "parley.dev/region" .root.Values.global.region -}}
{{- toYaml (merge $labels (.root.Values.global.commonLabels | default dict)) -}}
{{- end -}}

{{/* Pod labels: standard labels plus the component's podLabels (again never replacing a standard key). */}}
{{- define "common.labels.pod" -}}
{{- $labels := include "common.labels.standard" (dict "root" .root "name" .name) | fromYaml -}}
{{- toYaml (merge $labels (.component.podLabels | default dict)) -}}
{{- end -}}

{{/* Labels that pick the pods of another Parley chart's component in this namespace (NetworkPolicy peers). */}}
{{- define "common.labels.peer" -}}
app.kubernetes.io/name: {{ .chart }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: parley
{{- end -}}
