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
{{- get (dict "gateway" 9100 "metadata" 9101 "blobstore" 9102 "auth" 9103) . -}}
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
