{{/* ------------------------------------------------------------------------------------------
Model sources (docs/deploy.md, "Model sources"): target.model and draft.model are each
  hf://ORG/NAME[@REVISION]  downloaded per pod by an init container (`saguaro fetch-model`) into an
                            emptyDir of <component>.modelCacheSizeLimit;
  pvc://CLAIM[/PATH]        an existing claim mounted read-only at that sub-path;
  /ABSOLUTE/PATH            a folder already in the container: baked into the image, or on the
                            shared models.source volume mounted at models.mountPath.
The grammar is saguaro/model_source.py's; bad URIs fail the render with the same wording.
------------------------------------------------------------------------------------------ */}}

{{/* Where per-component sources are mounted: <root>/<component>. */}}
{{- define "saguaro.modelSourceRoot" -}}/var/lib/saguaro/models{{- end -}}

{{- define "saguaro.modelSourceFail" -}}
{{- fail (printf "%s.model: model source %q is not valid: %s; expected hf://ORG/NAME[@REVISION], pvc://CLAIM[/PATH] or an absolute path (a model baked into the image)" (index . 0) (index . 1) (index . 2)) -}}
{{- end -}}

{{/* The parsed source of one component as YAML (read it with fromYaml): kind (hf | pvc | local),
dir (the folder the service loads) and per kind uri/repo/revision or claim/path. Call with
(list $ "target"|"draft"). */}}
{{- define "saguaro.modelSource" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $uri := toString (get (get $root.Values $component) "model") -}}
{{- $base := printf "%s/%s" (include "saguaro.modelSourceRoot" $root) $component -}}
{{- if hasPrefix "hf://" $uri -}}
{{- $rest := trimPrefix "hf://" $uri -}}
{{- $parts := splitn "@" 2 $rest -}}
{{- $repo := $parts._0 -}}
{{- $revision := default "" $parts._1 -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$" $repo) -}}
{{- include "saguaro.modelSourceFail" (list $component $uri "the repository must be ORG/NAME (letters, digits, '.', '_' and '-')") -}}
{{- end -}}
{{- if and (contains "@" $rest) (not $revision) -}}
{{- include "saguaro.modelSourceFail" (list $component $uri "an empty revision after '@' (leave out '@' for main)") -}}
{{- end -}}
{{- if and $revision (or (not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._/-]*$" $revision)) (contains ".." $revision)) -}}
{{- include "saguaro.modelSourceFail" (list $component $uri (printf "the revision %q is not a branch, tag or commit name" $revision)) -}}
{{- end -}}
{{- $revision = default "main" $revision }}
kind: hf
uri: {{ printf "hf://%s@%s" $repo $revision | quote }}
repo: {{ $repo | quote }}
revision: {{ $revision | quote }}
mount: {{ $base | quote }}
dir: {{ printf "%s/%s" $base (base $repo) | quote }}
{{- else if hasPrefix "pvc://" $uri -}}
{{- $rest := trimPrefix "pvc://" $uri -}}
{{- $parts := splitn "/" 2 $rest -}}
{{- $claim := $parts._0 -}}
{{- $path := trimAll "/" (default "" $parts._1) -}}
{{- if or (not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $claim)) (gt (len $claim) 253) -}}
{{- include "saguaro.modelSourceFail" (list $component $uri (printf "%q is not a PersistentVolumeClaim name (lower-case letters, digits and '-')" $claim)) -}}
{{- end -}}
{{- if has ".." (splitList "/" $path) -}}
{{- include "saguaro.modelSourceFail" (list $component $uri "the path inside the claim may not contain '..'") -}}
{{- end }}
kind: pvc
claim: {{ $claim | quote }}
path: {{ $path | quote }}
dir: {{ printf "%s/%s" $base (ternary (base $path) $claim (ne $path "")) | quote }}
{{- else if hasPrefix "/" $uri }}
kind: local
dir: {{ $uri | quote }}
{{- else if contains "://" $uri -}}
{{- include "saguaro.modelSourceFail" (list $component $uri (printf "unknown scheme %q" (index (splitList "://" $uri) 0))) -}}
{{- else -}}
{{- include "saguaro.modelSourceFail" (list $component $uri "a path must be absolute") -}}
{{- end -}}
{{- end -}}

{{/* The folder a component's service loads (--model / --draft-model). */}}
{{- define "saguaro.modelDir" -}}
{{- (include "saguaro.modelSource" . | fromYaml).dir -}}
{{- end -}}

{{/* Components whose models a pod holds, as a list in YAML: a target pod also holds the draft's
when the draft runs inside it (sd: in the target process; colocated ssd: as containers). Call
with (list $ "target"|"draft"). */}}
{{- define "saguaro.podModelComponents" -}}
{{- $root := index . 0 -}}
{{- $components := list (index . 1) -}}
{{- if and (eq (index . 1) "target") (or (eq $root.Values.target.mode "sd") (include "saguaro.colocatedDraft" $root)) -}}
{{- $components = append $components "draft" -}}
{{- end -}}
{{- toYaml $components -}}
{{- end -}}

{{/* Components whose models one container reads: its own, and the draft's for an sd target. */}}
{{- define "saguaro.containerModelComponents" -}}
{{- $root := index . 0 -}}
{{- $components := list (index . 1) -}}
{{- if and (eq (index . 1) "target") (eq $root.Values.target.mode "sd") -}}
{{- $components = append $components "draft" -}}
{{- end -}}
{{- toYaml $components -}}
{{- end -}}

{{/* Pod volumes of the per-component sources; call with (list $ "target"|"draft"). */}}
{{- define "saguaro.modelVolumes" -}}
{{- $root := index . 0 -}}
{{- range $component := include "saguaro.podModelComponents" . | fromYamlArray }}
{{- $source := include "saguaro.modelSource" (list $root $component) | fromYaml }}
{{- if eq $source.kind "hf" }}
- name: model-{{ $component }}
  emptyDir:
    sizeLimit: {{ (get $root.Values $component).modelCacheSizeLimit }}
{{- else if eq $source.kind "pvc" }}
- name: model-{{ $component }}
  persistentVolumeClaim:
    claimName: {{ $source.claim }}
    readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Read-only mounts of the per-component sources in one container; call with
(list $ "target"|"draft"), the container's role. */}}
{{- define "saguaro.modelMounts" -}}
{{- $root := index . 0 -}}
{{- range $component := include "saguaro.containerModelComponents" . | fromYamlArray }}
{{- $source := include "saguaro.modelSource" (list $root $component) | fromYaml }}
{{- if eq $source.kind "hf" }}
- name: model-{{ $component }}
  mountPath: {{ $source.mount }}
  readOnly: true
{{- else if eq $source.kind "pvc" }}
- name: model-{{ $component }}
  mountPath: {{ $source.dir }}
  {{- with $source.path }}
  subPath: {{ . }}
  {{- end }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Download init containers of a pod's hf:// sources, then models.initContainers. They run the
pod's own image (both ship `saguaro fetch-model`). Call with (list $ "target"|"draft"). */}}
{{- define "saguaro.modelInitContainers" -}}
{{- $root := index . 0 -}}
{{- $pod := index . 1 -}}
{{- $podValues := get $root.Values $pod -}}
{{- $hf := $root.Values.models.huggingFace -}}
{{- range $component := include "saguaro.podModelComponents" . | fromYamlArray }}
{{- $source := include "saguaro.modelSource" (list $root $component) | fromYaml }}
{{- if eq $source.kind "hf" }}
- name: fetch-{{ $component }}-model
  image: {{ include "saguaro.image" (list $root $podValues.image) }}
  imagePullPolicy: {{ include "saguaro.pullPolicy" (list $root $podValues.image) }}
  args:
    - fetch-model
    - {{ $source.uri }}
    - {{ $source.dir }}
  env:
    - name: HOME
      value: /tmp
    - name: PYTHONUNBUFFERED
      value: "1"
    - name: HF_HUB_DISABLE_TELEMETRY
      value: "1"
    {{- with $hf.endpoint }}
    - name: HF_ENDPOINT
      value: {{ . | quote }}
    {{- end }}
    {{- if $hf.token.secretName }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $hf.token.secretName }}
          key: {{ $hf.token.key }}
    {{- end }}
  resources:
    {{- toYaml $hf.resources | nindent 4 }}
  securityContext:
    {{- include "saguaro.containerSecurityContext" (list $root $podValues) | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: model-{{ $component }}
      mountPath: {{ $source.mount }}
{{- end }}
{{- end }}
{{- with $root.Values.models.initContainers }}
{{ toYaml . }}
{{- end }}
{{- end -}}
