{{/* Names and labels shared by every template. */}}

{{- define "modelkiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelkiln.fullname" -}}
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

{{- define "modelkiln.operatorName" -}}
{{- printf "%s-operator" (include "modelkiln.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelkiln.devicePoolsName" -}}
{{- printf "%s-device-pools" (include "modelkiln.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Role the operator gets in each of operator.watchNamespaces. */}}
{{- define "modelkiln.watchedRoleName" -}}
{{- printf "%s-watched" (include "modelkiln.operatorName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelkiln.serviceAccountName" -}}
{{- default (include "modelkiln.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "modelkiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "modelkiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "modelkiln.operatorSelector" -}}
app.kubernetes.io/name: {{ include "modelkiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The labels the operator puts on model server pods (modelkiln.operator.objects). */}}
{{- define "modelkiln.servingSelector" -}}
app.kubernetes.io/component: serving
app.kubernetes.io/managed-by: modelkiln-operator
{{- end -}}

{{/* REGISTRY/NAME:TAG of one of the images (operator, server, converter), from image.registry
and image.tag (default: the chart's appVersion). Usage: include "modelkiln.image" (list . "server") */}}
{{- define "modelkiln.image" -}}
{{- $root := index . 0 -}}
{{- printf "%s/%s:%s" $root.Values.image.registry (index . 1) (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}

{{/* True when a monitor (serviceMonitor/podMonitor values) should render: asked for, and the
CRD is there or forced. */}}
{{- define "modelkiln.monitorWanted" -}}
{{- $v := index .root.Values.monitoring .key -}}
{{- if and $v.enabled (or $v.force (.root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind))) -}}
true
{{- end -}}
{{- end -}}

{{/* Device pools as the operator reads them. VPU is the old name of NPU: when set it replaces
NPU (the chart's default NPU pool would otherwise always be there too). */}}
{{- define "modelkiln.devicePools" -}}
{{- $pools := omit .Values.devicePools "VPU" -}}
{{- with .Values.devicePools.VPU -}}
{{- $_ := set $pools "NPU" . -}}
{{- end -}}
{{- toYaml $pools -}}
{{- end -}}

{{/* The operator's rules on namespaced objects: in its ClusterRole, or with
operator.watchNamespaces in a Role of each watched namespace. */}}
{{- define "modelkiln.namespacedRules" -}}
# The API it serves: kopf watches InferenceModels (a reconcile reads its model from that watch)
# and patches its own annotations; a reconcile patches the status.
- apiGroups: [modelkiln.io]
  resources: [inferencemodels]
  verbs: [list, watch, patch]
- apiGroups: [modelkiln.io]
  resources: [inferencemodels/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion.
- apiGroups: [modelkiln.io]
  resources: [inferencemodels/finalizers]
  verbs: [update]
# Conversion: the Job (watched: its changes reconcile the model), its pods' termination
# messages, the model repository's claim.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# Serving: watched (kopf keeps our objects in memory; a Deployment's changes reconcile the
# model), read, then server-side apply (create + patch) only what differs; the autoscaler,
# budget and the -pods Service of a model scaled to zero also go away.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# KEDA (request-based scaling and scale to zero), where it is installed.
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [http.keda.sh]
  resources: [interceptorroutes]
  verbs: [get, list, watch, create, patch, delete]
# kopf: Events on InferenceModels.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* Prometheus as a NetworkPolicy peer: its namespace and its pods (both must match). */}}
{{- define "modelkiln.monitoringPeer" -}}
namespaceSelector:
  {{- toYaml .Values.networkPolicy.monitoring.namespaceSelector | nindent 2 }}
podSelector:
  {{- toYaml .Values.networkPolicy.monitoring.podSelector | nindent 2 }}
{{- end -}}
