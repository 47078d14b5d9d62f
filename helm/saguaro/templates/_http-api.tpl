{{/*
The OpenAI HTTP API of a target pod (target.httpApi, on whenever inferencePool.enabled): what an
InferencePool's Gateway sends requests to. docs/deploy.md ("Routing: Saguaro's gateway or an
InferencePool") says why it is a second container and not the target process:

- it is the gateway process itself (`saguaro gateway`, the gateway image), so the OpenAI handlers,
  request validation, streaming and errors are the very code our gateway serves, not a copy, and
  the target keeps speaking only gRPC (no service imports another);
- it is pinned to its own target: static discovery of 127.0.0.1:<target.port>, no Redis, no prefix
  index (round-robin over one target), no migration (there is no other target to resume on). The
  InferencePool's endpoint picker chooses the pod; this container only translates HTTP to gRPC;
- its gRPC front is unused (the pod's gRPC API is the target's own): --port 0 lets the kernel pick
  a port, so it can never collide with the pod's declared ports, and the NetworkPolicy keeps it
  closed.
*/}}

{{/* "true" when target pods serve the HTTP API. */}}
{{- define "saguaro.httpApi" -}}
{{- if or .Values.target.httpApi.enabled .Values.inferencePool.enabled -}}true{{- end -}}
{{- end -}}

{{/* The http-api container of the target pod. */}}
{{- define "saguaro.httpApiContainer" -}}
{{- $values := .Values.target.httpApi -}}
{{- $probes := .Values.gateway.probes -}}
- name: http-api
  image: {{ include "saguaro.image" (list . .Values.gateway.image) }}
  imagePullPolicy: {{ include "saguaro.pullPolicy" (list . .Values.gateway.image) }}
  args:
    - gateway
    - --host
    - {{ .Values.target.listenHost | quote }}
    - --port
    - "0"
    - --http-port
    - {{ $values.port | quote }}
    - --targets
    - {{ printf "127.0.0.1:%d" (int .Values.target.port) | quote }}
    - --policy
    - round-robin
    - --max-migrations
    - "0"
    - --max-queue
    - {{ $values.maxQueue | quote }}
    {{- with .Values.gateway.modelName }}
    - --model-name
    - {{ . | quote }}
    {{- end }}
    {{- if include "saguaro.internalTls" . }}
    {{- /* the target serves TLS on every address, loopback included */}}
    {{- include "saguaro.internalTlsClientArgs" (list . "--target-tls") | nindent 4 }}
    - --target-tls-server-name
    - {{ include "saguaro.targetTlsServerName" . | quote }}
    {{- end }}
  env:
    {{- include "saguaro.commonEnv" (list . "saguaro-target-http") | nindent 4 }}
  ports:
    - name: http
      containerPort: {{ $values.port }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: http
    {{- include "saguaro.probeTiming" $probes.startup | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
    {{- include "saguaro.probeTiming" $probes.liveness | nindent 4 }}
  {{- /* ready once its target is healthy and the model (name, tokenizer) is known */}}
  readinessProbe:
    httpGet:
      path: /readyz
      port: http
    {{- include "saguaro.probeTiming" $probes.readiness | nindent 4 }}
  resources:
    {{- toYaml $values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if include "saguaro.internalTls" . }}
    {{- include "saguaro.internalTlsVolumeMount" . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The http-api port shares the target pod's network namespace with the target (target.port,
target.metricsPort) and, colocated, with draft worker i (draft.port + i, draft.metricsPort + i). */}}
{{- define "saguaro.checkHttpApiPort" -}}
{{- if include "saguaro.httpApi" . -}}
{{- $port := int .Values.target.httpApi.port -}}
{{- $taken := dict "target.port" (list (int .Values.target.port) 1) -}}
{{- if .Values.metrics.enabled -}}
{{- $_ := set $taken "target.metricsPort" (list (int .Values.target.metricsPort) 1) -}}
{{- end -}}
{{- if include "saguaro.colocatedDraft" . -}}
{{- $workers := int (include "saguaro.draftWorkers" .) -}}
{{- $_ := set $taken "draft.port" (list (int .Values.draft.port) $workers) -}}
{{- if .Values.metrics.enabled -}}
{{- $_ := set $taken "draft.metricsPort" (list (int .Values.draft.metricsPort) $workers) -}}
{{- end -}}
{{- end -}}
{{- range $what, $range := $taken -}}
{{- $first := index $range 0 -}}
{{- if and (ge $port $first) (lt $port (add $first (index $range 1))) -}}
{{- fail (printf "target.httpApi.port %d is already taken in the target pod by %s (%d, %d port(s)); choose another port" $port $what $first (index $range 1)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
