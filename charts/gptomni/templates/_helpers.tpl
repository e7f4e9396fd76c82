{{- define "gptomni.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gptomni.fullname" -}}
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

{{- define "gptomni.relay.fullname" -}}{{ include "gptomni.fullname" . | trunc 57 | trimSuffix "-" }}-relay{{- end -}}
{{- define "gptomni.operator.fullname" -}}{{ include "gptomni.fullname" . | trunc 54 | trimSuffix "-" }}-operator{{- end -}}

{{- define "gptomni.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "gptomni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gptomni
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "gptomni.relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gptomni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end -}}

{{- define "gptomni.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gptomni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "gptomni.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "gptomni.relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ include "gptomni.relay.fullname" . }}{{- else -}}default{{- end -}}
{{- end -}}

{{- define "gptomni.operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ include "gptomni.operator.fullname" . }}{{- else -}}default{{- end -}}
{{- end -}}

{{- define "gptomni.apiKeysSecret" -}}
{{- if .Values.relay.apiKeys.existingSecret -}}{{ .Values.relay.apiKeys.existingSecret }}{{- else -}}{{ include "gptomni.relay.fullname" . }}-api-keys{{- end -}}
{{- end -}}

{{- /* Paths inside the relay container; the pool path is what GPTOMNI_CREDENTIALS_FILE names. */ -}}
{{- define "gptomni.poolMountPath" -}}/var/run/gptomni/pool{{- end -}}
{{- define "gptomni.apiKeysMountPath" -}}/var/run/gptomni/api-keys{{- end -}}
{{- define "gptomni.keySetMountPath" -}}/var/run/gptomni/key-set{{- end -}}

{{- /* A component's (relay's or operator's) extra environment: its env map, then its extraEnvVars list. */ -}}
{{- define "gptomni.extraEnv" -}}
{{- range $name, $value := .env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- with .extraEnvVars }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /* A component's probes, as its values give them; a probe set to null is left out. */ -}}
{{- define "gptomni.probes" -}}
{{- range $probe := list "startupProbe" "livenessProbe" "readinessProbe" }}
{{- with index $ $probe }}
{{ $probe }}:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "gptomni.operator.namespacedRules" -}}
- apiGroups: [gptomni.io]
  resources: [gptomnicredentials, gptomniapikeys]
  verbs: [get, list, watch, patch, update]
- apiGroups: [gptomni.io]
  resources: [gptomnicredentials/status, gptomniapikeys/status]
  verbs: [get, patch, update]
# Reads the cookie Secrets the credentials reference; writes the pool Secrets; reads the
# API keys' Secrets (creating them, with a random key, when missing); writes the key sets.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, update]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.operator.peering.enabled }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{- /* API versions and features chosen by the cluster's version, as the widely used chart
libraries do (an offline `helm template` renders for Helm's built-in version unless given
--kube-version). Supported: Kubernetes 1.20 to 1.33 (docs/deploy.md). */ -}}
{{- define "gptomni.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{- define "gptomni.hpaApiVersion" -}}
{{- if semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version -}}autoscaling/v2{{- else -}}autoscaling/v2beta2{{- end -}}
{{- end -}}

{{- /* A preStop pause of N seconds: the kubelet's own sleep action where it is on by default
(beta in 1.30), else the image's sleep binary (an older API server prunes the unknown
field and rejects the then empty handler). */ -}}
{{- define "gptomni.preStopPause" -}}
{{- if semverCompare ">=1.30-0" .context.Capabilities.KubeVersion.Version -}}
sleep:
  seconds: {{ .seconds }}
{{- else -}}
exec:
  command: ["sleep", {{ .seconds | quote }}]
{{- end -}}
{{- end -}}
