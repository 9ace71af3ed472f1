{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "agentgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix: fullnameOverride, else the release name, with the chart name appended unless
the release name already contains it. Truncated so that suffixed names stay within 63 characters.
*/}}
{{- define "agentgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's Deployment, Service and PodDisruptionBudget name.
*/}}
{{- define "agentgate.operator.fullname" -}}
{{- printf "%s-operator" (include "agentgate.fullname" .) }}
{{- end }}

{{/*
helm.sh/chart label value.
*/}}
{{- define "agentgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "agentgate.labels" -}}
helm.sh/chart: {{ include "agentgate.chart" . }}
app.kubernetes.io/name: {{ include "agentgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the operator pods.
*/}}
{{- define "agentgate.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels on the operator's objects.
*/}}
{{- define "agentgate.operator.labels" -}}
{{ include "agentgate.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "agentgate.operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentgate.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion and a
digest wins over the tag. Called with (list $image $root).
*/}}
{{- define "agentgate.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The leader-election Lease name.
*/}}
{{- define "agentgate.leaseName" -}}
{{- default (include "agentgate.operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}
