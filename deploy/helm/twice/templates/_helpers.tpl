{{/* Names: <release>-twice by default, shortened to the 63 characters Kubernetes allows. */}}
{{- define "twice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "twice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>; components: gateway, vllm, redis. */}}
{{- define "twice.componentName" -}}
{{- printf "%s-%s" (include "twice.fullname" .root | trunc 56 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "twice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "twice.labels" -}}
helm.sh/chart: {{ include "twice.chart" . }}
app.kubernetes.io/name: {{ include "twice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: twice
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "twice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "twice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "twice.componentLabels" -}}
{{ include "twice.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "twice.gateway.fullname" -}}
{{- include "twice.componentName" (dict "root" . "component" "gateway") -}}
{{- end -}}

{{- define "twice.vllm.fullname" -}}
{{- include "twice.componentName" (dict "root" . "component" "vllm") -}}
{{- end -}}

{{- define "twice.router.fullname" -}}
{{- include "twice.componentName" (dict "root" . "component" "router") -}}
{{- end -}}

{{- define "twice.redis.fullname" -}}
{{- include "twice.componentName" (dict "root" . "component" "redis") -}}
{{- end -}}

{{- define "twice.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "twice.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding API keys, the admin key and the vLLM key: the chart's own or existingSecret. */}}
{{- define "twice.secretName" -}}
{{- default (include "twice.gateway.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "twice.image" -}}
{{- $tag := default .defaultTag .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
The vLLM base URL the gateway calls (without /v1): an explicit gateway.vllmUpstream wins, then the chart's
router when router.enabled, then the chart's own vLLM Service when vllm.enabled.
*/}}
{{- define "twice.vllmUpstream" -}}
{{- if .Values.gateway.vllmUpstream -}}
{{- .Values.gateway.vllmUpstream -}}
{{- else if .Values.router.enabled -}}
{{- printf "http://%s:%d" (include "twice.router.fullname" .) (int .Values.router.service.port) -}}
{{- else if .Values.vllm.enabled -}}
{{- printf "http://%s:%d" (include "twice.vllm.fullname" .) (int .Values.vllm.service.port) -}}
{{- end -}}
{{- end -}}

{{/* The Redis URL: the chart's own Redis, or redis.external.url. Empty when neither is set. */}}
{{- define "twice.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s:%d/%d" (include "twice.redis.fullname" .) (int .Values.redis.service.port) (int .Values.redis.database) -}}
{{- else if .Values.redis.external.url -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* Path the experiments JSON is mounted at (TWICE_EXPERIMENTS__SEED_FILE). */}}
{{- define "twice.experimentsPath" -}}
/etc/twice/experiments.json
{{- end -}}

{{/* Fail early on combinations that would deploy a gateway that cannot work. */}}
{{- define "twice.validate" -}}
{{- if and (eq .Values.gateway.backend "vllm") (not (include "twice.vllmUpstream" .)) -}}
{{- fail "gateway.backend=vllm needs vllm.enabled=true or gateway.vllmUpstream" -}}
{{- end -}}
{{- if and .Values.router.enabled (not .Values.vllm.enabled) -}}
{{- fail "router.enabled routes to this release's vLLM pods: it needs vllm.enabled=true" -}}
{{- end -}}
{{- if and .Values.redis.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) -}}
{{- fail "set either redis.enabled or redis.external, not both" -}}
{{- end -}}
{{- if and (eq .Values.gateway.backend "embedded") (gt (int .Values.gateway.workers) 1) -}}
{{- fail "the embedded backend runs one worker per pod: scale with gateway.replicaCount instead" -}}
{{- end -}}
{{- end -}}

{{/*
llama.cpp threads: gateway.embeddedThreads, or else the CPU limit rounded down (at least 1). Left unset,
llama.cpp would start one thread per host core, far more than the pod's CPU quota.
*/}}
{{- define "twice.embeddedThreads" -}}
{{- if gt (int .Values.gateway.embeddedThreads) 0 -}}
{{- int .Values.gateway.embeddedThreads -}}
{{- else -}}
{{- $cpu := toString (dig "limits" "cpu" "" .Values.gateway.resources) -}}
{{- if not $cpu -}}
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (int (trimSuffix "m" $cpu)) 1000) -}}
{{- else -}}
{{- max 1 (int (float64 $cpu)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The release's vLLM pods as a label selector (`k=v,k=v`), for the router's pod discovery. */}}
{{- define "twice.router.vllmSelector" -}}
{{- $labels := include "twice.selectorLabels" (dict "root" . "component" "vllm") | fromYaml -}}
{{- $pairs := list -}}
{{- range $key := keys $labels | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
