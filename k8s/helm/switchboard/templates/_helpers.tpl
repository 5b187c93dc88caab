{{/* Names, labels and the few computed values the templates share. */}}

{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name. Kept to 52 characters: Deployment pod names add
"-<replicaset hash>-<5 chars>", and the result is the node id (at most 128) and a
hostname (at most 63).
*/}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- end }}

{{/* The gateway nodes' pods (the bundled Redis has component=redis). */}}
{{- define "switchboard.nodeSelectorLabels" -}}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.internalServiceName" -}}
{{- printf "%s-internal" (include "switchboard.fullname" .) }}
{{- end }}

{{- define "switchboard.redisName" -}}
{{- printf "%s-redis" (include "switchboard.fullname" .) }}
{{- end }}

{{- define "switchboard.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Whole seconds of the drain timeout, rounded up. */}}
{{- define "switchboard.drainSeconds" -}}
{{- .Values.config.drainTimeout | float64 | ceil | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep and the whole drain must fit,
or the kubelet's SIGKILL cuts the drain short and clients lose their goodbye.
*/}}
{{- define "switchboard.terminationGracePeriod" -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (include "switchboard.drainSeconds" . | int) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $needed 10 }}
{{- else }}
{{- $given := .Values.terminationGracePeriodSeconds | int }}
{{- if le $given $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.drainTimeout (%d), or the drain is cut short" $given $needed) }}
{{- end }}
{{- $given }}
{{- end }}
{{- end }}

{{/*
Where each secret setting comes from: "name key" of a Secret, or "" when unset.
The chart's own Secret holds whatever is given as a plain value.
*/}}
{{- define "switchboard.redisUrlRef" -}}
{{- if .Values.redis.existingSecret }}
{{- printf "%s %s" .Values.redis.existingSecret .Values.redis.existingSecretKey }}
{{- else if or .Values.redis.url .Values.redis.bundled.enabled }}
{{- printf "%s redis-url" (include "switchboard.fullname" .) }}
{{- end }}
{{- end }}

{{- define "switchboard.apiKeyRef" -}}
{{- if .Values.apiKey.existingSecret }}
{{- printf "%s %s" .Values.apiKey.existingSecret .Values.apiKey.existingSecretKey }}
{{- else if .Values.apiKey.value }}
{{- printf "%s api-key" (include "switchboard.fullname" .) }}
{{- end }}
{{- end }}

{{- define "switchboard.jwtSecretRef" -}}
{{- if .Values.auth.jwtSecret.existingSecret }}
{{- printf "%s %s" .Values.auth.jwtSecret.existingSecret .Values.auth.jwtSecret.existingSecretKey }}
{{- else if .Values.auth.jwtSecret.value }}
{{- printf "%s jwt-secret" (include "switchboard.fullname" .) }}
{{- end }}
{{- end }}

{{/* Does the chart render its own Secret? */}}
{{- define "switchboard.ownSecret" -}}
{{- if or (and (not .Values.redis.existingSecret) (or .Values.redis.url .Values.redis.bundled.enabled)) (and (not .Values.apiKey.existingSecret) .Values.apiKey.value) (and (not .Values.auth.jwtSecret.existingSecret) .Values.auth.jwtSecret.value) (and (not .Values.auth.jwtPublicKey.existingSecret) .Values.auth.jwtPublicKey.pem) }}true{{ end }}
{{- end }}

{{/* Checks that no schema can express; run by the Deployment template. */}}
{{- define "switchboard.validate" -}}
{{- $redis := 0 }}
{{- if .Values.redis.url }}{{ $redis = add1 $redis }}{{ end }}
{{- if .Values.redis.existingSecret }}{{ $redis = add1 $redis }}{{ end }}
{{- if .Values.redis.bundled.enabled }}{{ $redis = add1 $redis }}{{ end }}
{{- if gt $redis 1 }}
{{- fail "give only one of redis.url, redis.existingSecret and redis.bundled.enabled" }}
{{- end }}
{{- if and (eq $redis 0) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "nodes need a shared Redis to form a cluster: set redis.url (e.g. --set redis.url=redis://redis:6379), redis.existingSecret, or redis.bundled.enabled=true to try it out; or run a single node (replicaCount=1) on the in-process backplane" }}
{{- end }}
{{- if and (not .Values.networkPolicy.enabled) (not .Values.networkPolicy.internal.allowWithoutNetworkPolicy) }}
{{- fail "networkPolicy.enabled=false leaves the internal port (server API, metrics) open to every pod of the cluster; set networkPolicy.internal.allowWithoutNetworkPolicy=true to accept that" }}
{{- end }}
{{- if and .Values.auth.jwtSecret.value .Values.auth.jwtSecret.existingSecret }}
{{- fail "give auth.jwtSecret.value or auth.jwtSecret.existingSecret, not both" }}
{{- end }}
{{- if and .Values.auth.jwtPublicKey.pem .Values.auth.jwtPublicKey.existingSecret }}
{{- fail "give auth.jwtPublicKey.pem or auth.jwtPublicKey.existingSecret, not both" }}
{{- end }}
{{- if and .Values.apiKey.value .Values.apiKey.existingSecret }}
{{- fail "give apiKey.value or apiKey.existingSecret, not both" }}
{{- end }}
{{- end }}
