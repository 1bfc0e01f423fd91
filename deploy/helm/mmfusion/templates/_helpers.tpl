{{/* Names, labels, and the pieces of the pod that several templates share. */}}

{{- define "mmfusion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mmfusion.fullname" -}}
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

{{- define "mmfusion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mmfusion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mmfusion.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mmfusion.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "mmfusion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mmfusion.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mmfusion.secretName" -}}
{{- default (printf "%s-secrets" (include "mmfusion.fullname" .)) .Values.secrets.name }}
{{- end }}

{{- define "mmfusion.image" -}}
{{- $tag := printf "%s%s" (default .Chart.AppVersion .Values.image.tag) (ternary .Values.gpu.imageTagSuffix "" .Values.gpu.enabled) }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Where the init container leaves the secret files, owner-only, for serve to read. */}}
{{- define "mmfusion.secretsDir" -}}/run/mmfusion/secrets{{- end }}
{{- define "mmfusion.secretSources" -}}/etc/mmfusion/secret-sources{{- end }}
{{- define "mmfusion.modelSources" -}}/etc/mmfusion/model-sources{{- end }}
{{- define "mmfusion.auditDir" -}}/var/log/mmfusion/audit{{- end }}

{{/* The secret files serve reads, comma-separated keys: from secrets.name, and (TLS) from tls.secretName. */}}
{{- define "mmfusion.secretFiles" -}}
{{- $files := list }}
{{- if .Values.auth.apiKeys }}{{ $files = append $files "api-keys.yaml" }}{{ end }}
{{- if .Values.auth.jwt.publicKey }}{{ $files = append $files "jwt-public.pem" }}{{ end }}
{{- if and .Values.audit.enabled .Values.audit.keyed }}{{ $files = append $files "audit-key.json" }}{{ end }}
{{- join "," $files }}
{{- end }}

{{- define "mmfusion.tlsFiles" -}}
{{- $files := list }}
{{- if .Values.tls.enabled }}{{ $files = list "tls.crt" "tls.key" }}{{ end }}
{{- if and .Values.tls.enabled .Values.tls.clientCA }}{{ $files = append $files "ca.crt" }}{{ end }}
{{- join "," $files }}
{{- end }}

{{- define "mmfusion.needsInit" -}}
{{- if or (include "mmfusion.secretFiles" . | trim) (include "mmfusion.tlsFiles" . | trim) (eq .Values.modelRepository.source "configMaps") }}true{{ end }}
{{- end }}

{{/* Requests: the server's base plus each model's share; limits: memory (and CPU, GPUs when asked). */}}
{{- define "mmfusion.resources" -}}
{{- $cpu := int .Values.resources.base.cpuMillicores }}
{{- $memory := int .Values.resources.base.memoryMiB }}
{{- range .Values.models }}
{{- $cpu = add $cpu (int (default 0 .cpuMillicores)) }}
{{- $memory = add $memory (int (default 0 .memoryMiB)) }}
{{- end }}
{{- $memoryLimit := int .Values.resources.memoryLimitMiB }}
{{- if eq $memoryLimit 0 }}{{ $memoryLimit = $memory }}{{ end }}
requests:
  cpu: {{ printf "%dm" $cpu }}
  memory: {{ printf "%dMi" $memory }}
limits:
  memory: {{ printf "%dMi" $memoryLimit }}
  {{- if gt (int .Values.resources.cpuLimitMillicores) 0 }}
  cpu: {{ printf "%dm" (int .Values.resources.cpuLimitMillicores) }}
  {{- end }}
  {{- if .Values.gpu.enabled }}
  {{ .Values.gpu.resourceName }}: {{ .Values.gpu.count }}
  {{- end }}
{{- end }}

{{/* The flags of `mmfusion serve`, after the model names; every path points where a volume is mounted. */}}
{{- define "mmfusion.serveArgs" -}}
{{- $v := .Values }}
{{- $secrets := include "mmfusion.secretsDir" . }}
{{- range $v.models }}
- {{ .name | quote }}
{{- end }}
- --host=0.0.0.0
- --port={{ $v.serve.port }}
{{- if ne $v.serve.metricsPort nil }}
- --metrics-port={{ $v.serve.metricsPort }}
- --metrics-host=0.0.0.0
{{- end }}
{{- if or (not $v.tls.enabled) (ne $v.serve.metricsPort nil) }}
- --insecure
{{- end }}
{{- if not $v.serve.requireManifest }}
- --no-require-manifest
{{- end }}
{{- with $v.serve.backend }}
- --backend={{ . }}
{{- end }}
- --workers={{ $v.serve.workers }}
- --max-open-streams={{ $v.serve.maxOpenStreams }}
- --first-message-timeout={{ $v.serve.firstMessageTimeout }}
- --stream-idle-timeout={{ $v.serve.streamIdleTimeout }}
- --grace={{ $v.serve.grace }}
- --max-message-mb={{ $v.serve.maxMessageMb }}
- --cache-mb={{ $v.serve.cacheMb }}
{{- range $v.serve.noCacheModels }}
- --no-cache-model={{ . }}
{{- end }}
{{- if ne $v.serve.maxBatchSize nil }}
- --max-batch-size={{ $v.serve.maxBatchSize }}
{{- end }}
{{- if ne $v.serve.maxQueueDelayUs nil }}
- --max-queue-delay-us={{ $v.serve.maxQueueDelayUs }}
{{- end }}
{{- range $v.serve.preferredBatchSizes }}
- --preferred-batch-size={{ . }}
{{- end }}
{{- if ne $v.serve.maxQueueSize nil }}
- --max-queue-size={{ $v.serve.maxQueueSize }}
{{- end }}
{{- if $v.tls.enabled }}
- --tls-cert={{ $secrets }}/tls.crt
- --tls-key={{ $secrets }}/tls.key
{{- if $v.tls.clientCA }}
- --client-ca={{ $secrets }}/ca.crt
{{- end }}
{{- end }}
{{- if $v.auth.apiKeys }}
- --api-keys={{ $secrets }}/api-keys.yaml
{{- end }}
{{- if $v.auth.jwt.secret }}
- --jwt-secret-env=MMFUSION_JWT_SECRET
{{- end }}
{{- if $v.auth.jwt.publicKey }}
- --jwt-public-key={{ $secrets }}/jwt-public.pem
{{- end }}
{{- with $v.auth.jwt.audience }}
- --jwt-audience={{ . }}
{{- end }}
{{- if $v.auth.jwt.noAudience }}
- --jwt-no-audience
{{- end }}
{{- with $v.auth.jwt.issuer }}
- --jwt-issuer={{ . }}
{{- end }}
{{- if ne $v.auth.jwt.maxLifetime nil }}
- --jwt-max-lifetime={{ $v.auth.jwt.maxLifetime }}
{{- end }}
{{- if ne $v.auth.maxAuthFailures nil }}
- --max-auth-failures={{ $v.auth.maxAuthFailures }}
{{- end }}
{{- if $v.auth.policyConfigMap }}
- --policy=/etc/mmfusion/policy/policy.yaml
{{- end }}
{{- if $v.audit.enabled }}
- --audit-log={{ include "mmfusion.auditDir" . }}/audit.log
{{- if $v.audit.keyed }}
- --audit-key-file={{ $secrets }}/audit-key.json
{{- else }}
- --audit-unkeyed
{{- end }}
- --audit-fsync={{ $v.audit.fsync }}
{{- if $v.audit.failClosed }}
- --audit-fail-closed
{{- end }}
{{- end }}
{{- if ne $v.serve.rateLimit nil }}
- --rate-limit={{ $v.serve.rateLimit }}
{{- if ne $v.serve.burst nil }}
- --burst={{ $v.serve.burst }}
{{- end }}
{{- if ne $v.serve.maxStreams nil }}
- --max-streams={{ $v.serve.maxStreams }}
{{- end }}
{{- end }}
{{- range $v.serve.trustedProxies }}
- --trusted-proxy={{ . }}
{{- end }}
{{- range $v.serve.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The chart's own guard: serve's exposure check cannot stop an unauthenticated pod once --insecure is given. */}}
{{- define "mmfusion.checkValues" -}}
{{- $v := .Values }}
{{- $authenticated := or $v.auth.apiKeys $v.auth.jwt.secret $v.auth.jwt.publicKey (and $v.tls.enabled $v.tls.clientCA) }}
{{- if and (not $authenticated) (not $v.auth.allowUnauthenticated) }}
{{- fail "auth: no API keys, JWT or mutual TLS: every pod in the cluster could call the models; enable one (auth.apiKeys, auth.jwt.*, tls.clientCA) or set auth.allowUnauthenticated=true" }}
{{- end }}
{{- if and $v.auth.jwt.audience $v.auth.jwt.noAudience }}
{{- fail "auth.jwt: give audience or noAudience, not both" }}
{{- end }}
{{- if and (or $v.auth.jwt.secret $v.auth.jwt.publicKey) (not $v.auth.jwt.audience) (not $v.auth.jwt.noAudience) }}
{{- fail "auth.jwt: tokens need an audience (auth.jwt.audience) or auth.jwt.noAudience=true" }}
{{- end }}
{{- if and $v.tls.clientCA (not $v.tls.enabled) }}
{{- fail "tls.clientCA: needs tls.enabled=true" }}
{{- end }}
{{- if not $v.models }}
{{- fail "models: empty; name at least one model folder for serve to load" }}
{{- end }}
{{- if and (eq $v.modelRepository.source "persistentVolumeClaim") (not $v.modelRepository.persistentVolumeClaim.claimName) (not $v.modelRepository.persistentVolumeClaim.create) }}
{{- fail "modelRepository.persistentVolumeClaim: give claimName or create=true" }}
{{- end }}
{{- if and (eq $v.modelRepository.source "configMaps") (not $v.modelRepository.configMaps) }}
{{- fail "modelRepository.configMaps: empty; list one ConfigMap per model folder" }}
{{- end }}
{{- end }}
