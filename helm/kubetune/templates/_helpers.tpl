{{/* The chart's name, overridable. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Base name of every resource: <release>-kubetune, or the release name when it already
says kubetune. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubetune.operatorName" -}}
{{- printf "%s-operator" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of everything the release owns, without a component. */}}
{{- define "kubetune.baseLabels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "kubetune.labels" -}}
{{ include "kubetune.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator's pods (immutable in the Deployment). */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels the generated CRD templates add to their own (name and part-of). */}}
{{- define "kubetune.crdLabels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Monitoring objects: the release labels with .component, the `release` label
kube-prometheus-stack selects on (monitoring.release), and the object's extra labels (.extra). */}}
{{- define "kubetune.monitoringLabels" -}}
{{ include "kubetune.baseLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with .root.Values.monitoring.release }}
release: {{ . | quote }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest, else repository:tag (default appVersion). */}}
{{- define "kubetune.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The GPU price ConfigMap's name: gpuPrices.configMap, else the chart's own when
gpuPrices.perGpuHour has prices, else empty (no cost in status). */}}
{{- define "kubetune.gpuPricesConfigMap" -}}
{{- if .Values.gpuPrices.configMap -}}
{{- .Values.gpuPrices.configMap -}}
{{- else if .Values.gpuPrices.perGpuHour -}}
{{- printf "%s-gpu-prices" (include "kubetune.operatorName" .) -}}
{{- end -}}
{{- end }}
