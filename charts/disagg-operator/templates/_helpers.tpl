{{/* Chart name (app.kubernetes.io/name). */}}
{{- define "disagg-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "disagg-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "disagg-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "disagg-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels on every object of the chart. */}}
{{- define "disagg-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "disagg-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: disagg
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "disagg-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "disagg-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "disagg-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True ("true") when leader election is on: more than one replica. */}}
{{- define "disagg-operator.ha" -}}
{{- if gt (int .Values.replicas) 1 }}true{{ end }}
{{- end }}

{{/* The leader-election Lease: fixed in the operator (operator/disagg/leader.py, LeaderElector.name). */}}
{{- define "disagg-operator.leaseName" -}}
disagg-operator
{{- end }}

{{/*
Rules the operator needs in every namespace it serves (a ClusterRole when cluster-wide, a Role per
namespace otherwise). Derived from operator/disagg/kube/client.py and handlers.py:
- DisaggregatedModels: kopf lists/watches them, the controller gets/lists them and patches /status.
- Children (kube.CHILD_KINDS): listed by label, written by server-side apply, deleted when no
  longer rendered. An apply (PATCH) that creates the object is authorized as `create` too. Deployments are also watched by kopf and scaled through /scale (scale to zero).
- The router's Role grants pods and inferencepools/inferenceobjectives get/list/watch; RBAC lets
  the operator create that Role only if it holds those permissions itself (no `escalate`/`bind`).
- Events: events.k8s.io/v1 create (kopf's own core/v1 event posting is turned off).
*/}}
{{- define "disagg-operator.namespacedRules" -}}
- apiGroups: ["disagg.dev"]
  resources: ["disaggregatedmodels"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["disagg.dev"]
  resources: ["disaggregatedmodels/status"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# what the routers' Roles grant (a Role can only grant what its creator holds)
- apiGroups: ["inference.networking.k8s.io", "inference.networking.x-k8s.io"]
  resources: ["inferencepools", "inferenceobjectives"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["llm-d.ai", "inference.networking.x-k8s.io"]
  resources: ["inferenceobjectives", "inferencemodelrewrites"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Rules that are cluster-scoped by nature, needed in both modes:
- nodes and pods list/watch in all namespaces: the operator's caches (kube/cache.py) keep node
  labels, allocatable GPUs and the GPUs bound pods request per node, for topology packing.
- customresourcedefinitions list/watch: kopf notices CRDs (e.g. KEDA's) appearing at runtime.
*/}}
{{- define "disagg-operator.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
