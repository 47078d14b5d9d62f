{{/*
The endpoint picker's EndpointPickerConfig (inference.networking.x-k8s.io/v1alpha1): the
extension's default scorers (queue, KV-cache use, prefix cache), with the metrics extractor told
the names a Saguaro target exports (saguaro/telemetry/metrics.py: vLLM's names, so dashboards and
autoscalers written for vLLM work too). "saguaro" is the default engine, so unlabelled pods use it.
tests/helm/test_inference_pool.py reads these names from the render and finds them on a running
target's /metrics.
*/}}
{{- define "saguaro.eppConfig" -}}
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: prefix-cache-scorer
  - type: metrics-data-source
    parameters:
      scheme: http
      path: /metrics
  - type: core-metrics-extractor
    parameters:
      defaultEngine: saguaro
      engineConfigs:
        - name: saguaro
          queuedRequestsSpec: "vllm:num_requests_waiting"
          runningRequestsSpec: "vllm:num_requests_running"
          kvUsageSpec: "vllm:kv_cache_usage_perc"
          loraSpec: ""
          cacheInfoSpec: "vllm:cache_config_info"
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: queue-scorer
        weight: 2
      - pluginRef: kv-cache-utilization-scorer
        weight: 2
      - pluginRef: prefix-cache-scorer
        weight: 3
{{- end -}}
