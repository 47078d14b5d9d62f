{{/* ------------------------------------------------------------------------------------------
Names and labels
------------------------------------------------------------------------------------------ */}}

{{- define "saguaro.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The resource-name prefix; short enough that "<prefix>-<component>-<ordinal>" plus the
StatefulSet revision-hash label stays within 63 characters. */}}
{{- define "saguaro.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>"; call with (list $ "component"). */}}
{{- define "saguaro.componentName" -}}
{{- printf "%s-%s" (include "saguaro.fullname" (index . 0)) (index . 1) -}}
{{- end -}}

{{- define "saguaro.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "saguaro.selectorLabels" -}}
app.kubernetes.io/name: {{ include "saguaro.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "saguaro.labels" -}}
helm.sh/chart: {{ include "saguaro.chart" . }}
{{ include "saguaro.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: saguaro
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component; call with (list $ "component"). */}}
{{- define "saguaro.componentSelectorLabels" -}}
{{ include "saguaro.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "saguaro.componentLabels" -}}
{{ include "saguaro.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The same selector as a "k=v,k=v" string (KEDA podSelector). */}}
{{- define "saguaro.componentSelectorString" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name={{ include "saguaro.name" $root }},app.kubernetes.io/instance={{ $root.Release.Name }},app.kubernetes.io/component={{ index . 1 }}
{{- end -}}

{{/* A PromQL label matcher for one component's pods, as the PodMonitor labels them
(podTargetLabels, sanitised by Prometheus). */}}
{{/* The recorded goodput series (templates/prometheusrule.yaml): committed tokens per second of
target round time, per pool. */}}
{{- define "saguaro.goodputSeries" -}}
saguaro:goodput_tokens_per_target_second:rate2m
{{- end -}}

{{/* What one target replica commits per second, for the goodput trigger: the recorded, measured
goodput when monitoring.prometheusRule.enabled, else (and while the pool is idle, when there is
no goodput to measure) the configured plain-decoding rate times the live tokens per round. Never
empty while the target series exist, so a missing series still means a failed scrape (KEDA's
fallback), not an idle pool. Call with (list $ selector). */}}
{{- define "saguaro.replicaTokensPerSecond" -}}
{{- $root := index . 0 -}}
{{- $selector := index . 1 -}}
{{- $estimate := printf "(%v * (1 + (sum(rate(vllm:spec_decode_num_accepted_tokens_total{ %s }[10m])) or vector(0)) / clamp_min((sum(rate(vllm:spec_decode_num_drafts_total{ %s }[10m])) or vector(0)), 1e-9)))" $root.Values.target.autoscaling.arTokensPerSecondPerReplica $selector $selector -}}
{{- if $root.Values.monitoring.prometheusRule.enabled -}}
((sum({{ include "saguaro.goodputSeries" $root }}{ {{ $selector }} }) > 0) or {{ $estimate }})
{{- else -}}
{{ $estimate }}
{{- end -}}
{{- end -}}

{{- define "saguaro.promSelector" -}}
{{- $root := index . 0 -}}
inference_server="saguaro",namespace="{{ $root.Release.Namespace }}",saguaro_release="{{ $root.Release.Name }}",saguaro_pool="{{ index . 1 }}"
{{- end -}}

{{/* --metrics-label arguments of a Saguaro container: the labels promSelector matches, exported
by the process itself on every series so the selector works under any Prometheus scrape
configuration (a PodMonitor, a generic kubernetes-pods job, anything; docs/observability.md).
namespace and pod come from the downward API (saguaro.commonEnv). Call with (list $ "target"). */}}
{{- define "saguaro.metricsLabelArgs" -}}
{{- $root := index . 0 -}}
- --metrics-label
- saguaro_release={{ $root.Release.Name }}
- --metrics-label
- saguaro_pool={{ index . 1 }}
- --metrics-label
- namespace=$(POD_NAMESPACE)
- --metrics-label
- pod=$(POD_NAME)
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Derived settings
------------------------------------------------------------------------------------------ */}}

{{/* "true" when a separate draft process serves the target (ssd mode). */}}
{{- define "saguaro.usesDraftService" -}}
{{- if eq .Values.target.mode "ssd" -}}true{{- end -}}
{{- end -}}

{{/* "true" when the draft runs as its own StatefulSet (ssd + remote pairing). */}}
{{- define "saguaro.remoteDraft" -}}
{{- if and (eq .Values.target.mode "ssd") (eq .Values.pairing.mode "remote") -}}true{{- end -}}
{{- end -}}

{{/* "true" when the draft container sits in the target pod (ssd + colocated pairing). */}}
{{- define "saguaro.colocatedDraft" -}}
{{- if and (eq .Values.target.mode "ssd") (eq .Values.pairing.mode "colocated") -}}true{{- end -}}
{{- end -}}

{{/* Draft workers per target (draft.workers): the target splits each batch's sequences across them
(ssd: one draft service each; sd: worker threads in the target process). */}}
{{- define "saguaro.draftWorkers" -}}
{{- max 1 (int (default 1 .Values.draft.workers)) -}}
{{- end -}}

{{/* Name of draft worker i's workload in remote pairing: "<fullname>-draft" for a single worker
(so draft.workers=1 keeps the original StatefulSet), "<fullname>-draft-w<i>" for several. Call
with (list $ i). */}}
{{- define "saguaro.draftWorkloadName" -}}
{{- $root := index . 0 -}}
{{- $name := include "saguaro.componentName" (list $root "draft") -}}
{{- if gt (int (include "saguaro.draftWorkers" $root)) 1 -}}
{{- printf "%s-w%d" $name (int (index . 1)) -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/* The label telling the draft worker StatefulSets apart (remote pairing with draft.workers > 1;
empty otherwise). Call with (list $ i). */}}
{{- define "saguaro.draftWorkerLabels" -}}
{{- $root := index . 0 -}}
{{- if gt (int (include "saguaro.draftWorkers" $root)) 1 -}}
saguaro/draft-worker: {{ index . 1 | toString | quote }}
{{- end -}}
{{- end -}}

{{/* Name of the environment variable holding draft worker i's address in the target container:
SAGUARO_DRAFT_ADDRESS, SAGUARO_DRAFT_ADDRESS_1, ... (one variable per address: a $(VAR) reference
expands to exactly one argument). */}}
{{- define "saguaro.draftAddressVar" -}}
SAGUARO_DRAFT_ADDRESS{{ if gt (int .) 0 }}_{{ . }}{{ end }}
{{- end -}}

{{/* Colocated pairing puts the target and every draft worker in one network namespace: the
target's ports and each worker's draft.port + i / draft.metricsPort + i must all differ. */}}
{{- define "saguaro.checkColocatedPorts" -}}
{{- if include "saguaro.colocatedDraft" . -}}
{{- $metrics := .Values.metrics.enabled -}}
{{- $used := dict (toString (int .Values.target.port)) "target.port" -}}
{{- if $metrics -}}
{{- $_ := set $used (toString (int .Values.target.metricsPort)) "target.metricsPort" -}}
{{- end -}}
{{- $ports := list -}}
{{- range $i := until (int (include "saguaro.draftWorkers" .)) -}}
{{- $ports = append $ports (list (add (int $.Values.draft.port) $i) (ternary "draft.port" (printf "draft.port + %d" $i) (eq $i 0))) -}}
{{- if $metrics -}}
{{- $ports = append $ports (list (add (int $.Values.draft.metricsPort) $i) (ternary "draft.metricsPort" (printf "draft.metricsPort + %d" $i) (eq $i 0))) -}}
{{- end -}}
{{- end -}}
{{- range $entry := $ports -}}
{{- $port := int (index $entry 0) -}}
{{- $what := index $entry 1 -}}
{{- if gt $port 65535 -}}
{{- fail (printf "colocated pairing with draft.workers=%d: %s is %d, above 65535; lower draft.port / draft.metricsPort" (int (include "saguaro.draftWorkers" $)) $what $port) -}}
{{- end -}}
{{- if hasKey $used (toString $port) -}}
{{- fail (printf "colocated pairing: %s and %s are both port %d in the target pod (draft worker i listens on draft.port + i and draft.metricsPort + i, draft.workers=%d); choose non-overlapping ports" (get $used (toString $port)) $what $port (int (include "saguaro.draftWorkers" $))) -}}
{{- end -}}
{{- $_ := set $used (toString $port) $what -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The target workload kind: a StatefulSet when drafts pair by ordinal, else a Deployment. */}}
{{- define "saguaro.targetKind" -}}
{{- if include "saguaro.remoteDraft" . -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}

{{- define "saguaro.device" -}}
{{- $root := index . 0 -}}
{{- $engine := index . 1 -}}
{{- if $engine.device -}}{{ $engine.device }}{{- else if $root.Values.gpu.enabled -}}cuda{{- else -}}cpu{{- end -}}
{{- end -}}

{{/* Ranks of the target's tensor parallelism: target.engine.tensorParallelSize, or one per GPU. */}}
{{- define "saguaro.tensorParallelSize" -}}
{{- $engine := .Values.target.engine -}}
{{- $gpus := int .Values.target.gpus -}}
{{- $size := 1 -}}
{{- if $engine.tensorParallelSize -}}
{{- $size = int $engine.tensorParallelSize -}}
{{- else if and .Values.gpu.enabled (gt $gpus 1) -}}
{{- $size = $gpus -}}
{{- end -}}
{{- if and .Values.gpu.enabled (gt $size $gpus) -}}
{{- fail (printf "target.engine.tensorParallelSize (%d) needs as many GPUs per target pod; target.gpus is %d" $size $gpus) -}}
{{- end -}}
{{- $size -}}
{{- end -}}

{{- define "saguaro.redisURLConfigured" -}}
{{- if eq .Values.redis.mode "bundled" -}}true
{{- else if and (eq .Values.redis.mode "external") (or .Values.redis.external.url .Values.redis.external.urlSecret.name) -}}true
{{- end -}}
{{- end -}}

{{- define "saguaro.redisSecretName" -}}
{{- if .Values.redis.bundled.auth.existingSecret -}}
{{- .Values.redis.bundled.auth.existingSecret -}}
{{- else -}}
{{- include "saguaro.componentName" (list . "redis") -}}
{{- end -}}
{{- end -}}

{{- define "saguaro.gatewayServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "saguaro.componentName" (list . "gateway")) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference; call with (list $ .Values.<component>.image). A digest wins over the tag
(repo@sha256:...): the reference then names one immutable image, whatever the registry's tags do. */}}
{{- define "saguaro.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repository := $image.repository -}}
{{- if $root.Values.image.registry -}}
{{- $repository = printf "%s/%s" $root.Values.image.registry $image.repository -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default (default $root.Chart.AppVersion $root.Values.image.tag) $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The pod securityContext of a component: podSecurityContext with the component's
podSecurityContext merged over it. Call with (list $ componentValues). */}}
{{- define "saguaro.podSecurityContext" -}}
{{- $root := index . 0 -}}
{{- toYaml (mergeOverwrite (deepCopy $root.Values.podSecurityContext) (deepCopy (default dict (index . 1).podSecurityContext))) -}}
{{- end -}}

{{/* The container securityContext of a component's containers (init containers included):
containerSecurityContext with the component's merged over it. Call with (list $ componentValues). */}}
{{- define "saguaro.containerSecurityContext" -}}
{{- $root := index . 0 -}}
{{- toYaml (mergeOverwrite (deepCopy $root.Values.containerSecurityContext) (deepCopy (default dict (index . 1).containerSecurityContext))) -}}
{{- end -}}

{{- define "saguaro.pullPolicy" -}}
{{- $root := index . 0 -}}
{{- default $root.Values.image.pullPolicy (index . 1).pullPolicy -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Pod and container fragments
------------------------------------------------------------------------------------------ */}}

{{/* Environment common to every Saguaro container: pod identity and OpenTelemetry.
Call with (list $ "service-name"). */}}
{{- define "saguaro.commonEnv" -}}
{{- $root := index . 0 -}}
{{- $service := index . 1 -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: PYTHONUNBUFFERED
  value: "1"
- name: HOME
  value: /tmp
{{- if $root.Values.otel.enabled }}
- name: OTEL_SERVICE_NAME
  value: {{ $service }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $root.Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $root.Values.otel.protocol | quote }}
- name: OTEL_EXPORTER_OTLP_INSECURE
  value: {{ $root.Values.otel.insecure | quote }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_METRICS_EXPORTER
  value: none
- name: OTEL_LOGS_EXPORTER
  value: none
- name: OTEL_TRACES_SAMPLER
  value: {{ $root.Values.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $root.Values.otel.samplerArg | quote }}
- name: OTEL_PROPAGATORS
  value: tracecontext,baggage
{{- $attrs := list (printf "service.namespace=%s" $root.Release.Namespace) "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" "k8s.node.name=$(NODE_NAME)" }}
{{- range $key, $value := $root.Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if $root.Values.otel.headersSecret }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.otel.headersSecret }}
      key: OTEL_EXPORTER_OTLP_HEADERS
{{- end }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- end -}}

{{/* Environment of GPU-engine containers (target, draft): caches under the writable /tmp. */}}
{{- define "saguaro.engineEnv" -}}
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: TRITON_CACHE_DIR
  value: /tmp/.cache/triton
- name: TORCHINDUCTOR_CACHE_DIR
  value: /tmp/.cache/torchinductor
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
{{- end -}}

{{/* Resources with the GPU count added to requests and limits; call with (list $ resources gpus). */}}
{{- define "saguaro.gpuResources" -}}
{{- $root := index . 0 -}}
{{- $resources := deepCopy (index . 1 | default dict) -}}
{{- $gpus := int (index . 2) -}}
{{- if and $root.Values.gpu.enabled (gt $gpus 0) -}}
{{- $requests := deepCopy (get $resources "requests" | default dict) -}}
{{- $limits := deepCopy (get $resources "limits" | default dict) -}}
{{- $_ := set $requests $root.Values.gpu.resourceName $gpus -}}
{{- $_ := set $limits $root.Values.gpu.resourceName $gpus -}}
{{- $_ := set $resources "requests" $requests -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* Probe timing fields of one probe's values, as YAML. */}}
{{- define "saguaro.probeTiming" -}}
{{- $timing := dict -}}
{{- range $key := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "successThreshold" "failureThreshold" -}}
{{- if hasKey $ $key -}}
{{- $_ := set $timing $key (get $ $key) -}}
{{- end -}}
{{- end -}}
{{- toYaml $timing -}}
{{- end -}}

{{/* The health probe script mounted into target and draft containers (files/saguaro-probe.py). */}}
{{- define "saguaro.probeScript" -}}/etc/saguaro/probe/saguaro-probe.py{{- end -}}

{{/* startupProbe, livenessProbe and readinessProbe of a container that serves grpc.health.v1
(saguaro/standard_services.py: saguaro.live for liveness, "" or saguaro.undegraded for
readiness). Call with (list $ values port readyService tls? loopback?):
* plaintext on the pod IP: the kubelet's own grpc: probes (no process started per probe);
* TLS on the port (the kubelet's gRPC probe neither trusts a private CA nor presents a client
  certificate): exec probes running files/saguaro-probe.py over TLS; the startup probe stays a
  TCP connect on the named port "grpc" (no handshake needed, no interpreter every period while
  the model loads);
* loopback (a colocated draft; the kubelet dials the pod IP): exec probes for all three.
An exec probe's --timeout is its timeoutSeconds. */}}
{{- define "saguaro.grpcProbes" -}}
{{- $root := index . 0 -}}
{{- $values := index . 1 -}}
{{- $port := int (index . 2) -}}
{{- $ready := index . 3 -}}
{{- $tls := index . 4 -}}
{{- $loopback := index . 5 -}}
{{- $script := include "saguaro.probeScript" $root -}}
{{- $tlsArgs := include "saguaro.probeTlsArgs" (list $root $tls) -}}
{{- if not (or $tls $loopback) }}
startupProbe:
  grpc:
    port: {{ $port }}
    service: saguaro.live
  {{- include "saguaro.probeTiming" $values.probes.startup | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ $port }}
    service: saguaro.live
  {{- include "saguaro.probeTiming" $values.probes.liveness | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ $port }}
    service: {{ $ready | quote }}
  {{- include "saguaro.probeTiming" $values.probes.readiness | nindent 2 }}
{{- else }}
startupProbe:
  {{- if $loopback }}
  exec:
    command: ["python", {{ $script | quote }}, "health", "--port", {{ $port | quote }}, "--live", "--timeout", {{ $values.probes.startup.timeoutSeconds | default 3 | quote }}{{ $tlsArgs }}]
  {{- else }}
  tcpSocket:
    port: grpc
  {{- end }}
  {{- include "saguaro.probeTiming" $values.probes.startup | nindent 2 }}
livenessProbe:
  exec:
    command: ["python", {{ $script | quote }}, "health", "--port", {{ $port | quote }}, "--live", "--timeout", {{ $values.probes.liveness.timeoutSeconds | default 3 | quote }}{{ $tlsArgs }}]
  {{- include "saguaro.probeTiming" $values.probes.liveness | nindent 2 }}
readinessProbe:
  exec:
    command: ["python", {{ $script | quote }}, "health", "--port", {{ $port | quote }}, "--service", {{ $ready | quote }}, "--timeout", {{ $values.probes.readiness.timeoutSeconds | default 3 | quote }}{{ $tlsArgs }}]
  {{- include "saguaro.probeTiming" $values.probes.readiness | nindent 2 }}
{{- end }}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Internal TLS (internalTls): one Secret (tls.crt, tls.key, ca.crt) mounted read-only at
saguaro.internalTlsPath in the containers that speak gRPC inside the release.
------------------------------------------------------------------------------------------ */}}

{{- define "saguaro.internalTlsPath" -}}/etc/saguaro/internal-tls{{- end -}}

{{/* "true" when internal TLS is on; refuses inconsistent values (the schema says the same, but
`helm install --skip-schema-validation` or a values file edited after validation still get a
readable message). */}}
{{- define "saguaro.internalTls" -}}
{{- $tls := .Values.internalTls | default dict -}}
{{- if $tls.enabled -}}
{{- if not $tls.existingSecret -}}
{{- fail "internalTls.enabled needs internalTls.existingSecret: the name of a Secret holding tls.crt, tls.key and ca.crt (e.g. a cert-manager Certificate's secretName)" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when the target -> draft hop uses TLS: internal TLS with a draft service (ssd), always
in remote pairing, in colocated pairing unless internalTls.colocatedDraft is false. */}}
{{- define "saguaro.draftTls" -}}
{{- if and (include "saguaro.internalTls" .) (include "saguaro.usesDraftService" .) -}}
{{- if or (include "saguaro.remoteDraft" .) .Values.internalTls.colocatedDraft -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/* Server flags of the target and the draft: serve TLS, and with internalTls.mutual require a
client certificate signed by ca.crt. */}}
{{- define "saguaro.internalTlsServerArgs" -}}
{{- $path := include "saguaro.internalTlsPath" . -}}
- --tls-cert
- {{ $path }}/tls.crt
- --tls-key
- {{ $path }}/tls.key
{{- if .Values.internalTls.mutual }}
- --tls-client-ca
- {{ $path }}/ca.crt
{{- end }}
{{- end -}}

{{/* The name the gateway verifies target certificates against (--target-tls-server-name): one
name whatever address it dials, since a shared certificate cannot list pod IPs. */}}
{{- define "saguaro.targetTlsServerName" -}}
{{- .Values.internalTls.targetServerName | default (printf "%s.%s.svc.%s" (include "saguaro.componentName" (list . "target")) .Release.Namespace .Values.clusterDomain) -}}
{{- end -}}

{{/* Client flags towards a peer; call with (list $ "--target-tls") or (list $ "--draft-tls"):
verify the peer against ca.crt, and with internalTls.mutual present tls.crt / tls.key. */}}
{{- define "saguaro.internalTlsClientArgs" -}}
{{- $root := index . 0 -}}
{{- $flag := index . 1 -}}
{{- $path := include "saguaro.internalTlsPath" $root -}}
- {{ $flag }}-ca
- {{ $path }}/ca.crt
{{- if $root.Values.internalTls.mutual }}
- {{ $flag }}-cert
- {{ $path }}/tls.crt
- {{ $flag }}-key
- {{ $path }}/tls.key
{{- end }}
{{- end -}}

{{/* Extra arguments of an exec health probe (inside a JSON-style list, each with a leading
comma); call with (list $ tls?): with TLS on the probed port the probe dials 127.0.0.1 over TLS,
verifying the server against ca.crt, and with internalTls.mutual presents the pod's certificate.
Empty without TLS. */}}
{{- define "saguaro.probeTlsArgs" -}}
{{- $root := index . 0 -}}
{{- if index . 1 -}}
{{- $path := include "saguaro.internalTlsPath" $root -}}
, "--tls-ca", {{ printf "%s/ca.crt" $path | quote }}
{{- if $root.Values.internalTls.mutual -}}
, "--tls-cert", {{ printf "%s/tls.crt" $path | quote }}, "--tls-key", {{ printf "%s/tls.key" $path | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret volume (only the three keys: a Secret without one of them fails the pod's start
with a clear event instead of a crash-looping service). */}}
{{- define "saguaro.internalTlsVolume" -}}
- name: internal-tls
  secret:
    secretName: {{ .Values.internalTls.existingSecret }}
    defaultMode: 0440
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      - key: ca.crt
        path: ca.crt
{{- end -}}

{{- define "saguaro.internalTlsVolumeMount" -}}
- name: internal-tls
  mountPath: {{ include "saguaro.internalTlsPath" . }}
  readOnly: true
{{- end -}}

{{/* Tolerations of a GPU component; call with (list $ componentValues). */}}
{{- define "saguaro.gpuTolerations" -}}
{{- $root := index . 0 -}}
{{- $values := index . 1 -}}
{{- $tolerations := list -}}
{{- if and $root.Values.gpu.enabled (eq $values.tolerationsPolicy "append") -}}
{{- $tolerations = concat $tolerations $root.Values.gpu.tolerations -}}
{{- end -}}
{{- $tolerations = concat $tolerations $values.tolerations -}}
{{- if $tolerations -}}
{{- toYaml $tolerations -}}
{{- end -}}
{{- end -}}

{{/* Affinity of a GPU component: GPU product node affinity, plus (remote pairing) keeping it off
the other role's nodes. Call with (list $ componentValues "component" "otherComponent"). */}}
{{- define "saguaro.gpuAffinity" -}}
{{- $root := index . 0 -}}
{{- $values := index . 1 -}}
{{- $other := index . 3 -}}
{{- if $values.affinity -}}
{{- toYaml $values.affinity -}}
{{- else -}}
{{- $affinity := dict -}}
{{- if and $root.Values.gpu.enabled $root.Values.gpu.productAffinity $root.Values.gpu.products -}}
{{- $expression := dict "key" $root.Values.gpu.productLabel "operator" "In" "values" $root.Values.gpu.products -}}
{{- $terms := list (dict "matchExpressions" (list $expression)) -}}
{{- $_ := set $affinity "nodeAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (dict "nodeSelectorTerms" $terms)) -}}
{{- end -}}
{{- if and (include "saguaro.remoteDraft" $root) (ne $root.Values.pairing.remote.antiAffinity "none") -}}
{{- $selector := dict "app.kubernetes.io/name" (include "saguaro.name" $root) "app.kubernetes.io/instance" $root.Release.Name "app.kubernetes.io/component" $other -}}
{{- $term := dict "labelSelector" (dict "matchLabels" $selector) "topologyKey" $root.Values.pairing.remote.topologyKey -}}
{{- if eq $root.Values.pairing.remote.antiAffinity "required" -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) -}}
{{- else -}}
{{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) -}}
{{- end -}}
{{- end -}}
{{- if $affinity -}}
{{- toYaml $affinity -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Topology spread of a component; call with (list $ componentValues "component"). */}}
{{- define "saguaro.topologySpread" -}}
{{- $root := index . 0 -}}
{{- $spread := (index . 1).topologySpread -}}
{{- if $spread.enabled -}}
- maxSkew: {{ $spread.maxSkew }}
  topologyKey: {{ $spread.topologyKey }}
  whenUnsatisfiable: {{ $spread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "saguaro.componentSelectorLabels" (list $root (index . 2)) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Speculation flags shared by target (sd/ssd) and draft. */}}
{{- define "saguaro.speculationArgs" -}}
- --k
- $(SAGUARO_K)
- --fan-out
- $(SAGUARO_FAN_OUT)
- --backup
- $(SAGUARO_BACKUP)
- --jit-max-batch
- $(SAGUARO_JIT_MAX_BATCH)
- --saguaro-c
- $(SAGUARO_SAGUARO_C)
{{- with .Values.speculation.fanOutList }}
- --fan-out-list
{{- range . }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- with .Values.speculation.fanOutListMiss }}
- --fan-out-list-miss
{{- range . }}
- {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Engine flags; call with (list $ engineValues). Values come from the component's ConfigMap. */}}
{{- define "saguaro.engineArgs" -}}
{{- $engine := index . 1 -}}
{{- $tensorParallel := and (gt (len .) 2) (index . 2) -}}
- --dtype
- $(SAGUARO_DTYPE)
- --device
- $(SAGUARO_DEVICE)
- --max-num-seqs
- $(SAGUARO_MAX_NUM_SEQS)
- --kv-cache-bytes
- $(SAGUARO_KV_CACHE_BYTES)
- --block-size
- $(SAGUARO_BLOCK_SIZE)
{{- if $engine.maxModelLen }}
- --max-model-len
- $(SAGUARO_MAX_MODEL_LEN)
{{- end }}
{{- if not $engine.prefixCaching }}
- --no-prefix-caching
{{- end }}
{{- if $tensorParallel }}
- --tensor-parallel-size
- $(SAGUARO_TENSOR_PARALLEL_SIZE)
{{- end }}
- --metrics-port
- $(SAGUARO_METRICS_PORT)
- --log-format
- $(SAGUARO_LOG_FORMAT)
{{- end -}}

{{/* ConfigMap data of an engine component; call with (list $ componentValues "target"|"draft"). */}}
{{- define "saguaro.engineConfig" -}}
{{- $root := index . 0 -}}
{{- $values := index . 1 -}}
{{- $engine := $values.engine -}}
SAGUARO_MODEL: {{ include "saguaro.modelDir" (list $root (index . 2)) | quote }}
SAGUARO_DTYPE: {{ $engine.dtype | quote }}
SAGUARO_DEVICE: {{ include "saguaro.device" (list $root $engine) | quote }}
SAGUARO_MAX_NUM_SEQS: {{ $engine.maxNumSeqs | quote }}
SAGUARO_KV_CACHE_BYTES: {{ $engine.kvCacheBytes | int64 | quote }}
SAGUARO_BLOCK_SIZE: {{ $root.Values.target.engine.blockSize | quote }}
{{- if $engine.maxModelLen }}
SAGUARO_MAX_MODEL_LEN: {{ $engine.maxModelLen | quote }}
{{- end }}
SAGUARO_K: {{ $root.Values.speculation.k | quote }}
SAGUARO_FAN_OUT: {{ $root.Values.speculation.fanOut | quote }}
SAGUARO_BACKUP: {{ $root.Values.speculation.backup | quote }}
SAGUARO_JIT_MAX_BATCH: {{ $root.Values.speculation.jitMaxBatch | quote }}
SAGUARO_SAGUARO_C: {{ $root.Values.speculation.saguaroC | quote }}
SAGUARO_LOG_FORMAT: {{ $root.Values.logFormat | quote }}
{{- end -}}

{{/* Volumes of GPU pods: writable /tmp, /dev/shm, the model source and the probe script. */}}
{{- define "saguaro.engineVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 20Gi
{{- if .Values.gpu.enabled }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.gpu.shmSize }}
{{- end }}
- name: probe
  configMap:
    name: {{ include "saguaro.componentName" (list . "probe") }}
    defaultMode: 0444
{{- if eq .Values.models.source "none" }}
{{- else if eq .Values.models.source "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ default (include "saguaro.componentName" (list . "models")) .Values.models.pvc.existingClaim }}
{{- else if eq .Values.models.source "hostPath" }}
- name: models
  hostPath:
    path: {{ .Values.models.hostPath.path }}
    type: {{ .Values.models.hostPath.type }}
{{- else if eq .Values.models.source "emptyDir" }}
- name: models
  emptyDir:
    sizeLimit: {{ .Values.models.emptyDir.sizeLimit }}
{{- end }}
{{- if include "saguaro.internalTls" . }}
{{ include "saguaro.internalTlsVolume" . }}
{{- end }}
{{- end -}}

{{- define "saguaro.engineVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.gpu.enabled }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
- name: probe
  mountPath: /etc/saguaro/probe
  readOnly: true
{{- if ne .Values.models.source "none" }}
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The name of colocated draft worker i's metrics port in the target pod (port names are
unique per pod and at most 15 characters): draft-metrics, draft-metrics-1, ... The PodMonitor
scrapes each by this name. Call with the worker index. */}}
{{- define "saguaro.colocatedDraftMetricsPort" -}}
{{- ternary (printf "draft-metrics-%d" (int .)) "draft-metrics" (gt (int .) 0) -}}
{{- end -}}

{{/* The draft container (colocated: inside the target pod, listening on loopback; remote: its own
pod). Call with (list $ colocated? [worker]). Colocated draft worker i (draft.workers > 1) is the
container "draft-<i>" on draft.port + i and draft.metricsPort + i: its env overrides the
ConfigMap's SAGUARO_PORT / SAGUARO_METRICS_PORT (env wins over envFrom). */}}
{{- define "saguaro.draftContainer" -}}
{{- $root := index . 0 -}}
{{- $colocated := index . 1 -}}
{{- $worker := 0 -}}
{{- if gt (len .) 2 -}}
{{- $worker = int (index . 2) -}}
{{- end -}}
{{- $values := $root.Values.draft -}}
{{- $port := add (int $values.port) $worker -}}
{{- /* TLS on this hop: always for a remote draft, for a colocated one unless internalTls.colocatedDraft is false */ -}}
{{- $tls := include "saguaro.draftTls" $root -}}
- name: {{ ternary (printf "draft-%d" $worker) "draft" (gt $worker 0) }}
  image: {{ include "saguaro.image" (list $root $values.image) }}
  imagePullPolicy: {{ include "saguaro.pullPolicy" (list $root $values.image) }}
  args:
    - draft
    - --model
    - $(SAGUARO_MODEL)
    - --host
    - {{ ternary "127.0.0.1" $values.listenHost $colocated | quote }}
    - --port
    - $(SAGUARO_PORT)
    {{- include "saguaro.speculationArgs" $root | nindent 4 }}
    {{- include "saguaro.engineArgs" (list $root $values.engine) | nindent 4 }}
    {{- include "saguaro.metricsLabelArgs" (list $root "draft") | nindent 4 }}
    {{- if and $colocated $root.Values.metrics.enabled }}
    {{- /* gRPC stays on loopback; /metrics must be reachable by Prometheus on the pod IP */}}
    - --metrics-host
    - 0.0.0.0
    {{- end }}
    {{- if $tls }}
    {{- include "saguaro.internalTlsServerArgs" $root | nindent 4 }}
    {{- end }}
    {{- range $values.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  envFrom:
    - configMapRef:
        name: {{ include "saguaro.componentName" (list $root "draft") }}
  env:
    {{- include "saguaro.commonEnv" (list $root "saguaro-draft") | nindent 4 }}
    {{- include "saguaro.engineEnv" $root | nindent 4 }}
    {{- if gt $worker 0 }}
    - name: SAGUARO_PORT
      value: {{ $port | quote }}
    - name: SAGUARO_METRICS_PORT
      value: {{ ternary (add (int $values.metricsPort) $worker) 0 $root.Values.metrics.enabled | quote }}
    {{- end }}
    {{- with $values.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- /* colocated: gRPC listens on the pod's loopback (--host), so only the metrics port is
  declared, under a name of its own in the target pod (saguaro.colocatedDraftMetricsPort) */}}
  {{- if not $colocated }}
  ports:
    - name: grpc
      containerPort: {{ $values.port }}
      protocol: TCP
    {{- if $root.Values.metrics.enabled }}
    - name: metrics
      containerPort: {{ $values.metricsPort }}
      protocol: TCP
    {{- end }}
  {{- else if $root.Values.metrics.enabled }}
  ports:
    - name: {{ include "saguaro.colocatedDraftMetricsPort" $worker }}
      containerPort: {{ add (int $values.metricsPort) $worker }}
      protocol: TCP
  {{- end }}
  {{- /* colocated: loopback only, and the kubelet's probes dial the pod IP, so check from inside */}}
  {{- include "saguaro.grpcProbes" (list $root $values $port "" $tls $colocated) | nindent 2 }}
  resources:
    {{- include "saguaro.gpuResources" (list $root $values.resources $values.gpus) | nindent 4 }}
  securityContext:
    {{- include "saguaro.containerSecurityContext" (list $root $values) | nindent 4 }}
  volumeMounts:
    {{- include "saguaro.engineVolumeMounts" $root | nindent 4 }}
    {{- include "saguaro.modelMounts" (list $root "draft") | nindent 4 }}
    {{- if $tls }}
    {{- include "saguaro.internalTlsVolumeMount" $root | nindent 4 }}
    {{- end }}
    {{- with $values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The Redis URL environment of gateway containers (SAGUARO_REDIS_URL); empty without Redis. */}}
{{- define "saguaro.redisEnv" -}}
{{- if eq .Values.redis.mode "bundled" }}
{{- $host := printf "%s.%s.svc.%s" (include "saguaro.componentName" (list . "redis")) .Release.Namespace .Values.clusterDomain }}
{{- if .Values.redis.bundled.auth.enabled }}
- name: SAGUARO_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "saguaro.redisSecretName" . }}
      key: {{ .Values.redis.bundled.auth.passwordKey }}
- name: SAGUARO_REDIS_URL
  value: {{ printf "redis://:$(SAGUARO_REDIS_PASSWORD)@%s:%d/0" $host (int .Values.redis.bundled.port) | quote }}
{{- else }}
- name: SAGUARO_REDIS_URL
  value: {{ printf "redis://%s:%d/0" $host (int .Values.redis.bundled.port) | quote }}
{{- end }}
{{- else if eq .Values.redis.mode "external" }}
{{- if .Values.redis.external.urlSecret.name }}
- name: SAGUARO_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.urlSecret.name }}
      key: {{ .Values.redis.external.urlSecret.key }}
{{- else }}
- name: SAGUARO_REDIS_URL
  value: {{ .Values.redis.external.url | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Render a value through tpl with extra fields; call with (list $ value extraDict). */}}
{{- define "saguaro.tpl" -}}
{{- $root := index . 0 -}}
{{- $context := dict "Values" $root.Values "Release" $root.Release "Chart" $root.Chart "Capabilities" $root.Capabilities "Template" $root.Template -}}
{{- $context = merge $context (index . 2) -}}
{{- $value := index . 1 -}}
{{- if typeIs "string" $value -}}
{{- tpl $value $context -}}
{{- else -}}
{{- tpl (toYaml $value) $context -}}
{{- end -}}
{{- end -}}
