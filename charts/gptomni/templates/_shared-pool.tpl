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

{{- /* The relay's settings for it. */ -}}
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
{{- if .username }}
{{- if not .passwordSecret.name }}{{ fail "relay.sharedPool.username needs relay.sharedPool.passwordSecret.name" }}{{ end }}
- name: GPTOMNI_REDIS_USERNAME
  value: {{ .username | quote }}
{{- end }}
- name: GPTOMNI_POOL_LEASE_SECONDS
  value: {{ .leaseSeconds | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- /* The most relay pods that can hold streams at once: twice the replicas (the HPA's
maximum when it is on). A rolling update (maxSurge 1, maxUnavailable 0) ends with a full new
ReplicaSet serving while every old pod may still be terminating, draining the streams it
took (for up to terminationGracePeriodSeconds; the Deployment no longer counts it), and the
same holds when relay.replicas changes (old count + new count <= twice the larger). Each pod
keeps to maxConcurrency divided by this without Redis, and in a Redis outage: so a cookie's
limit holds with the chart's defaults, scaled or rolled (docs/shared-pool.md). */ -}}
{{- define "gptomni.relay.mostPods" -}}
{{- mul (ternary .Values.relay.autoscaling.maxReplicas .Values.relay.replicas .Values.relay.autoscaling.enabled) 2 -}}
{{- end -}}
