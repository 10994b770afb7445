{{/* Names and labels shared by the templates. */}}

{{- define "lora-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lora-operator.fullname" -}}
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

{{- define "lora-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "lora-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator pods; trainer pods carry app.kubernetes.io/component: trainer instead. */}}
{{- define "lora-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lora-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lora-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lora-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lora-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lora-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/* Trainer pods run in every job's namespace: the ServiceAccount goes to each of these. */}}
{{- define "lora-operator.trainerNamespaces" -}}
{{- $namespaces := list .Release.Namespace }}
{{- if .Values.operator.watchNamespace }}
{{- $namespaces = append $namespaces .Values.operator.watchNamespace }}
{{- end }}
{{- concat $namespaces .Values.trainer.serviceAccount.namespaces | uniq | toJson }}
{{- end }}

{{/* The GPU-node toleration as the JSON list in LORA_GPU_TOLERATIONS (Exists carries no value). */}}
{{- define "lora-operator.gpuTolerations" -}}
{{- $t := .Values.gpu.toleration }}
{{- $out := dict "key" $t.key "operator" $t.operator }}
{{- if and (eq $t.operator "Equal") $t.value }}
{{- $_ := set $out "value" $t.value }}
{{- end }}
{{- if $t.effect }}
{{- $_ := set $out "effect" $t.effect }}
{{- end }}
{{- list $out | toJson }}
{{- end }}

{{/* What the operator does in a job's namespace: in the ClusterRole when it watches every namespace,
in a Role of operator.watchNamespace otherwise. */}}
{{- define "lora-operator.jobNamespaceRules" -}}
# Trainer pods: one per admitted job, deleted on suspend, cancel or deadline.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# The trainer ServiceAccount (token automount off, bound to nothing) in a job's namespace, made
# at admission because a job may come from any namespace. create only: an existing one answers
# 409, which the operator takes as done; it never reads, changes or mints tokens for one.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [create]
# get, and only Secrets of the storage Secret names the platform allows (storage.existingSecret
# and storage.allowedSecretNames): the operator reads a job's storage keys from the job's own
# Secret to check its dataset, read its progress and finalize its checkpoint. It never lists or
# watches Secrets, so it cannot enumerate credentials, and it cannot be pointed at any other
# Secret of a namespace (a job naming one fails SecretNotFound with a 403 in its message).
- apiGroups: [""]
  resources: [secrets]
  resourceNames:
    {{- range (prepend .Values.storage.allowedSecretNames .Values.storage.existingSecret | uniq) }}
    - {{ . | quote }}
    {{- end }}
  verbs: [get]
{{- if .Values.kueue.enabled }}
# Kueue: a batch/v1 Job per attempt of a job that names a LocalQueue (created suspended and gated,
# patched to remove the operator's admission gate once the dataset check passed, deleted with its
# attempt), and its Workload read for Kueue's conditions (admitted, evicted, why); and the pending
# Workloads of a LocalQueue from Kueue's visibility API, for the waiting jobs' queuePosition.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch]
- apiGroups: [visibility.kueue.x-k8s.io]
  resources: [localqueues/pendingworkloads]
  verbs: [get]
{{- end }}
{{- end }}

{{/*
LORA_TRAINER_POD: trainer.pod as JSON, without the empty values (an empty priorityClassName is no name).
*/}}
{{- define "lora-operator.trainerPod" -}}
{{- $pod := dict -}}
{{- range $key, $value := .Values.trainer.pod -}}
{{- if not (empty $value) -}}
{{- $_ := set $pod $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $pod -}}
{{- end -}}
