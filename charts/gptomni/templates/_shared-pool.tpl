{{- /* The shared pool (relay.sharedPool, docs/shared-pool.md). */ -}}
{{- define "gptomni.redis.fullname" -}}{{ include "gptomni.fullname" . | trunc 57 | trimSuffix "-" }}-redis{{- end -}}

{{- define "gptomni.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gptomni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- /* The Redis the relay uses: the one named, else the bundled one. */ -}}
{{- define "gptomni.redisUrl" -}}
{{- if .Values.relay.sharedPool.redisUrl -}}
{{ .Values.relay.sharedPool.redisUrl }}
{{- else if .Values.relay.sharedPool.bundledRedis.enabled -}}
redis://{{ include "gptomni.redis.fullname" . }}.{{ .Release.Namespace }}.svc:6379/0
{{- else -}}
{{ fail "relay.sharedPool.enabled needs relay.sharedPool.redisUrl or relay.sharedPool.bundledRedis.enabled" }}
{{- end -}}
{{- end -}}

{{- /* The relay's settings for it; the fallback share divides by the most replicas there can be. */ -}}
{{- define "gptomni.sharedPoolEnv" -}}
{{- with .Values.relay.sharedPool }}
{{- if .enabled }}
- name: GPTOMNI_REDIS_URL
  value: {{ include "gptomni.redisUrl" $ | quote }}
{{- if .passwordSecret.name }}
- name: GPTOMNI_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .passwordSecret.name }}
      key: {{ .passwordSecret.key }}
{{- end }}
- name: GPTOMNI_POOL_LEASE_SECONDS
  value: {{ .leaseSeconds | quote }}
- name: GPTOMNI_REPLICAS
  value: {{ ternary $.Values.relay.autoscaling.maxReplicas $.Values.relay.replicas $.Values.relay.autoscaling.enabled | quote }}
{{- end }}
{{- end }}
{{- end -}}
