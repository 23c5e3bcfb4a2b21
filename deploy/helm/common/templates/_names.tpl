{{/*
Names. Every object name is a DNS label of at most 63 characters. When a name must be shortened, only the
release part is cut; the chart and component parts are kept, so two objects never collapse onto one name.
No nameOverride/fullnameOverride: peers compute each other's Service names (see common.names.peerUrl).
*/}}

{{/* The chart's name: app.kubernetes.io/name. */}}
{{- define "common.names.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<base>-<suffix>" in 63 characters, cutting the base, never the suffix: (dict "base" "..." "suffix" "..."). */}}
{{- define "common.names.join" -}}
{{- $room := int (sub 62 (len .suffix)) -}}
{{- printf "%s-%s" (.base | trunc $room | trimSuffix "-") .suffix -}}
{{- end -}}

{{/* "<release>-<chart>[-<suffix>]", or "<release>[-<suffix>]" when the release name already contains
the chart's name. Only the release part is ever cut, so names of different charts and components stay
distinct however long the release name: (dict "root" $ "chart" "chat" "suffix" "api"). */}}
{{- define "common.names.qualified" -}}
{{- $release := .root.Release.Name -}}
{{- $parts := list -}}
{{- if not (contains .chart $release) -}}
{{- $parts = append $parts .chart -}}
{{- end -}}
{{- if .suffix -}}
{{- $parts = append $parts .suffix -}}
{{- end -}}
{{- if $parts -}}
{{- include "common.names.join" (dict "base" $release "suffix" (join "-" $parts)) -}}
{{- else -}}
{{- $release | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A chart's full name; takes (dict "root" $ "chart" "chat") so a chart can name a peer of the same release. */}}
{{- define "common.names.fullnameFor" -}}
{{- include "common.names.qualified" (dict "root" .root "chart" .chart "suffix" "") -}}
{{- end -}}

{{/* This chart's full name. */}}
{{- define "common.names.fullname" -}}
{{- include "common.names.fullnameFor" (dict "root" . "chart" .Chart.Name) -}}
{{- end -}}

{{/* A name of this chart's objects: "<fullname>-<suffix>"; takes (dict "root" $ "name" "api"). */}}
{{- define "common.names.component" -}}
{{- include "common.names.qualified" (dict "root" .root "chart" .root.Chart.Name "suffix" .name) -}}
{{- end -}}

{{/* The in-cluster base URL of a peer chart's HTTP component in the same release, unless
global.serviceUrls names it: (dict "root" $ "chart" "chat"). */}}
{{- define "common.names.peerUrl" -}}
{{- $explicit := index .root.Values.global.serviceUrls .chart | default "" -}}
{{- if $explicit -}}
{{- $explicit | trimSuffix "/" -}}
{{- else -}}
{{- $peer := include "common.names.qualified" (dict "root" .root "chart" .chart "suffix" "api") -}}
{{- printf "http://%s.%s.svc" $peer .root.Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* helm.sh/chart label value. */}}
{{- define "common.names.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The chart's ServiceAccount. */}}
{{- define "common.names.serviceAccount" -}}
{{- include "common.names.fullname" . -}}
{{- end -}}

{{/* The chart's settings ConfigMap. */}}
{{- define "common.names.config" -}}
{{- include "common.names.component" (dict "root" . "name" "config") -}}
{{- end -}}
