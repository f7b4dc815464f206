{{/* Names, labels and images shared by every template. */}}

{{- define "wharf.name" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "wharf.labels" -}}
app.kubernetes.io/name: wharf
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The labels that select one component's pods: dict "root" . "component" "gateway". */}}
{{- define "wharf.selector" -}}
app.kubernetes.io/name: wharf
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The port a component serves /metrics on: include "wharf.metricsPort" "gateway". */}}
{{- define "wharf.metricsPort" -}}
{{- get (dict "gateway" 9100 "metadata" 9101 "blobstore" 9102 "auth" 9103 "events" 9106) . -}}
{{- end -}}

{{- define "wharf.image" -}}
{{- $image := .root.Values.image -}}
{{- $prefix := ternary "" (printf "%s/" $image.registry) (empty $image.registry) -}}
{{- printf "%s%s/%s:%s" $prefix $image.repository .component (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "wharf.internalSecret" -}}
{{- default (printf "%s-internal" (include "wharf.name" .)) .Values.internalTokenSecret -}}
{{- end -}}

{{- define "wharf.adminSecret" -}}
{{- default (printf "%s-admin" (include "wharf.name" .)) .Values.auth.adminPasswordSecret -}}
{{- end -}}

{{/* A generated secret value that survives upgrades: the one in the cluster, else a new one. */}}
{{- define "wharf.keep" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name -}}
{{- if and $existing (index $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum 48 | b64enc -}}
{{- end -}}
{{- end -}}

{{/* An egress rule to a port: to these CIDRs, or anywhere when none is given. */}}
{{- define "wharf.to" -}}
{{- if .cidrs }}
    - to:
        {{- range .cidrs }}
        - ipBlock: {cidr: {{ . }}}
        {{- end }}
      ports: [{protocol: TCP, port: {{ .port }}}]
{{- else }}
    - ports: [{protocol: TCP, port: {{ .port }}}]
{{- end }}
{{- end -}}

{{/* Where the gateway, the blob store, auth and gc find the upstreams file, and the blob store the password files. */}}
{{- define "wharf.mirrorsDir" -}}/etc/wharf/mirrors{{- end -}}
{{- define "wharf.mirrorCredentialsDir" -}}/etc/wharf/mirror-credentials{{- end -}}

{{/* The Secret of the mirrors' password files: the named one, the chart's, or none (anonymous upstreams). */}}
{{- define "wharf.mirrorCredentialsSecret" -}}
{{- $credentials := .Values.mirrors.credentials -}}
{{- if $credentials.existingSecret -}}
{{- $credentials.existingSecret -}}
{{- else if $credentials.passwords -}}
{{- printf "%s-mirror-credentials" (include "wharf.name" .) -}}
{{- end -}}
{{- end -}}

{{/* The mirrors.yaml the services read, after checking what a template can: a mistake fails
the render rather than every start of the gateway, the blob store and auth (and every gc run). */}}
{{- define "wharf.mirrorsFile" -}}
{{- $m := .Values.mirrors -}}
{{- if not $m.upstreams }}{{ fail "mirrors.enabled needs at least one entry in mirrors.upstreams" }}{{ end -}}
{{- if and $m.credentials.existingSecret $m.credentials.passwords -}}
{{- fail "mirrors.credentials: give existingSecret or passwords, not both" -}}
{{- end -}}
{{- $dir := printf "%s/" (include "wharf.mirrorCredentialsDir" .) -}}
{{- range $i, $u := $m.upstreams -}}
{{- $where := printf "mirrors.upstreams[%d]" $i -}}
{{- if not (kindIs "map" $u) }}{{ fail (printf "%s must be a mapping (prefix, url, ...)" $where) }}{{ end -}}
{{- with $u.password_file -}}
{{- if not (hasPrefix $dir .) -}}
{{- fail (printf "%s.password_file must be a key of the credentials Secret, %s<key>, not %v" $where $dir .) -}}
{{- end -}}
{{- $key := trimPrefix $dir . -}}
{{- if not (include "wharf.mirrorCredentialsSecret" $) -}}
{{- fail (printf "%s.password_file needs mirrors.credentials (existingSecret or passwords)" $where) -}}
{{- end -}}
{{- if and $m.credentials.passwords (not (hasKey $m.credentials.passwords $key)) -}}
{{- fail (printf "%s.password_file: mirrors.credentials.passwords has no key %s" $where $key) -}}
{{- end -}}
{{- end -}}
{{- if and (hasKey $u "size_limit") (not (kindIs "string" $u.size_limit)) -}}
{{- fail (printf "%s.size_limit must be text such as 50GiB or \"1073741824\" (a YAML number reaches the chart as a float)" $where) -}}
{{- end -}}
{{- end -}}
{{- dict "upstreams" $m.upstreams | toYaml -}}
{{- end -}}

{{/* The ports of the upstreams' URLs (443 for https, 80 for http, or the one named), as a JSON list. */}}
{{- define "wharf.mirrorPorts" -}}
{{- $ports := dict -}}
{{- range .Values.mirrors.upstreams -}}
{{- $url := urlParse (toString .url) -}}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" | default (ternary "80" "443" (eq $url.scheme "http")) -}}
{{- $_ := set $ports $port true -}}
{{- end -}}
{{- $list := list -}}
{{- range keys $ports | sortAlpha }}{{ $list = append $list (atoi .) }}{{ end -}}
{{- toJson $list -}}
{{- end -}}

{{/* Where the delivery service and the gateway find the endpoints file, and the delivery service the secret files. */}}
{{- define "wharf.eventsDir" -}}/etc/wharf/events{{- end -}}
{{- define "wharf.eventSecretsDir" -}}/etc/wharf/event-secrets{{- end -}}

{{/* The Secret of the endpoints' secret files: the named one, the chart's, or none (no endpoint signs). */}}
{{- define "wharf.eventSecretsSecret" -}}
{{- if .Values.events.existingSecret -}}
{{- .Values.events.existingSecret -}}
{{- else if .Values.events.secrets -}}
{{- printf "%s-event-secrets" (include "wharf.name" .) -}}
{{- end -}}
{{- end -}}

{{/* The events.yaml the delivery service and the gateway read, after checking what a template
can: a mistake fails the render rather than every start of both. Whole numbers come back as
integers (YAML numbers reach templates as floats, 1000000 would be written 1e+06). */}}
{{- define "wharf.eventsFile" -}}
{{- $e := .Values.events -}}
{{- if not $e.endpoints }}{{ fail "events.enabled needs at least one entry in events.endpoints" }}{{ end -}}
{{- if and $e.existingSecret $e.secrets -}}
{{- fail "events: give existingSecret or secrets, not both" -}}
{{- end -}}
{{- $dir := printf "%s/" (include "wharf.eventSecretsDir" .) -}}
{{- $endpoints := list -}}
{{- range $i, $given := $e.endpoints -}}
{{- $where := printf "events.endpoints[%d]" $i -}}
{{- if not (kindIs "map" $given) }}{{ fail (printf "%s must be a mapping (name, url, ...)" $where) }}{{ end -}}
{{- if not (and $given.name $given.url) }}{{ fail (printf "%s needs a name and a url" $where) }}{{ end -}}
{{- if hasKey $given "secret" -}}
{{- fail (printf "%s.secret would put the key into a ConfigMap: use secret_file, a key of the secrets Secret" $where) -}}
{{- end -}}
{{- with $given.secret_file -}}
{{- if not (hasPrefix $dir .) -}}
{{- fail (printf "%s.secret_file must be a key of the secrets Secret, %s<key>, not %v" $where $dir .) -}}
{{- end -}}
{{- $key := trimPrefix $dir . -}}
{{- if not (include "wharf.eventSecretsSecret" $) -}}
{{- fail (printf "%s.secret_file needs events.existingSecret or events.secrets" $where) -}}
{{- end -}}
{{- if and $e.secrets (not (hasKey $e.secrets $key)) -}}
{{- fail (printf "%s.secret_file: events.secrets has no key %s" $where $key) -}}
{{- end -}}
{{- end -}}
{{- $endpoint := deepCopy $given -}}
{{- range $name := list "timeout" "backoff" "max_backoff" "max_age" -}}
{{- if and (hasKey $given $name) (not (kindIs "string" (get $given $name))) (ne (toString (get $given $name)) "0") -}}
{{- fail (printf "%s.%s must be a duration such as 5s or 1m (a bare number would be a guess)" $where $name) -}}
{{- end -}}
{{- end -}}
{{- range $name := list "threshold" "attempts" "backlog" "batch" -}}
{{- $value := get $given $name -}}
{{- if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) -}}
{{- $_ := set $endpoint $name (int64 $value) -}}
{{- end -}}
{{- end -}}
{{- $endpoints = append $endpoints $endpoint -}}
{{- end -}}
{{- dict "endpoints" $endpoints | toYaml -}}
{{- end -}}

{{/* The ports of the endpoints' URLs (443 for https, 80 for http, or the one named), as a JSON list. */}}
{{- define "wharf.eventPorts" -}}
{{- $ports := dict -}}
{{- range .Values.events.endpoints -}}
{{- $url := urlParse (toString .url) -}}
{{- $port := regexFind ":[0-9]+$" $url.host | trimPrefix ":" | default (ternary "80" "443" (eq $url.scheme "http")) -}}
{{- $_ := set $ports $port true -}}
{{- end -}}
{{- $list := list -}}
{{- range keys $ports | sortAlpha }}{{ $list = append $list (atoi .) }}{{ end -}}
{{- toJson $list -}}
{{- end -}}

{{/* Where the metadata service finds the policy file. */}}
{{- define "wharf.policyDir" -}}/etc/wharf/policy{{- end -}}

{{/* The policy.yaml the metadata service reads, after checking what a template can (the sections,
lists of mappings): a mistake fails the render rather than every start of the metadata service.
The rules themselves are the service's to check (services/common/governance.py). */}}
{{- define "wharf.policyFile" -}}
{{- $sections := list "immutable" "quotas" "retention" "ratelimits" -}}
{{- $policy := dict -}}
{{- range $section, $given := .Values.policy -}}
{{- if not (has $section $sections) -}}
{{- fail (printf "policy.%s is not a section of the policy file (immutable, quotas, retention, ratelimits)" $section) -}}
{{- end -}}
{{- if and $given (not (kindIs "slice" $given)) }}{{ fail (printf "policy.%s must be a list of rules" $section) }}{{ end -}}
{{- range $i, $rule := $given -}}
{{- if not (kindIs "map" $rule) }}{{ fail (printf "policy.%s[%d] must be a mapping" $section $i) }}{{ end -}}
{{- end -}}
{{- if $given }}{{ $_ := set $policy $section $given }}{{ end -}}
{{- end -}}
{{- toYaml $policy -}}
{{- end -}}
