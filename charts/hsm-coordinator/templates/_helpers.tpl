{{/* Chart name, possibly overridden. */}}
{{- define "hsm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the release's resources. The StatefulSet has this name, so the
coordinator pods are "<fullname>-<ordinal>". Kept to 50 characters so that
pod names and the StatefulSet's controller-revision label stay under 63.
*/}}
{{- define "hsm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The headless Service giving each replica its DNS name. */}}
{{- define "hsm.headless" -}}
{{- printf "%s-headless" (include "hsm.fullname" .) -}}
{{- end -}}

{{- define "hsm.agentdName" -}}
{{- printf "%s-agentd" (include "hsm.fullname" .) -}}
{{- end -}}

{{- define "hsm.secretName" -}}
{{- default (printf "%s-raft" (include "hsm.fullname" .)) .Values.cluster.existingSecret -}}
{{- end -}}

{{- define "hsm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hsm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hsm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "hsm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "hsm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of the coordinator replicas. */}}
{{- define "hsm.coordinatorSelector" -}}
app.kubernetes.io/name: {{ include "hsm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end -}}

{{/* Selector labels of the agentd pods. */}}
{{- define "hsm.agentdSelector" -}}
app.kubernetes.io/name: {{ include "hsm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agentd
{{- end -}}

{{/* Replicas needed for a Raft majority. */}}
{{- define "hsm.quorum" -}}
{{- add (div (int .Values.coordinator.replicas) 2) 1 -}}
{{- end -}}

{{/* "host:port" of the API of replica .i (a dict with root and i). */}}
{{- define "hsm.replicaHost" -}}
{{- $root := .root -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "hsm.fullname" $root) (int .i) (include "hsm.headless" $root) $root.Release.Namespace $root.Values.cluster.clusterDomain -}}
{{- end -}}

{{/* The coordinators' API addresses, one per replica, in ordinal order. */}}
{{- define "hsm.apiAddresses" -}}
{{- $root := . -}}
{{- $out := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $out = append $out (printf "%s:%d" (include "hsm.replicaHost" (dict "root" $root "i" $i)) (int $root.Values.coordinator.apiPort)) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/*
Checks across values that values.schema.json cannot express. Included by the
StatefulSet, so "helm install/upgrade/template" stop with the message.
*/}}
{{- define "hsm.validate" -}}
{{- $c := .Values.coordinator -}}
{{- $ids := list -}}
{{- range $c.archiveIds }}{{ $ids = append $ids (int64 .) }}{{ end -}}
{{- if not (has (int64 $c.defaultArchiveId) $ids) -}}
{{- fail (printf "coordinator.defaultArchiveId %d is not one of coordinator.archiveIds %v" (int64 $c.defaultArchiveId) $ids) -}}
{{- end -}}
{{- $ring := 1048576 -}}{{- /* hsm.ring.MAX_POINTS */ -}}
{{- if gt (mul (int .Values.cluster.shards) (int .Values.cluster.vnodes)) $ring -}}
{{- fail (printf "cluster.shards %d x cluster.vnodes %d is more than the hash ring's %d points; use at most %d vnodes per shard" (int .Values.cluster.shards) (int .Values.cluster.vnodes) $ring (div $ring (int .Values.cluster.shards))) -}}
{{- end -}}
{{- $first := int $c.raftPort -}}
{{- $last := sub (add $first (int .Values.cluster.shards)) 1 -}}
{{- if gt $last 65535 -}}
{{- fail (printf "coordinator.raftPort %d + cluster.shards %d goes past port 65535" $first (int .Values.cluster.shards)) -}}
{{- end -}}
{{- $api := int $c.apiPort -}}
{{- if and (ge $api $first) (le $api $last) -}}
{{- fail (printf "coordinator.apiPort %d lies in the Raft port range %d-%d (raftPort + shard)" $api $first $last) -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled (ge (int .Values.serviceMonitor.port) $first) (le (int .Values.serviceMonitor.port) $last) -}}
{{- fail (printf "serviceMonitor.port %d lies in the Raft port range %d-%d" (int .Values.serviceMonitor.port) $first $last) -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of the bridge pods (of every file system). */}}
{{- define "hsm.bridgeSelector" -}}
app.kubernetes.io/name: {{ include "hsm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: bridge
{{- end -}}

{{/* Name of the bridge Deployment of file system .fsname (a dict with root and fsname). */}}
{{- define "hsm.bridgeName" -}}
{{- printf "%s-bridge-%s" (include "hsm.fullname" .root) (.fsname | lower | replace "_" "-" | trimAll "-") -}}
{{- end -}}

{{/* The client Service's address, "host:port", for the bridges. */}}
{{- define "hsm.serviceAddress" -}}
{{- printf "%s.%s.svc.%s:%d" (include "hsm.fullname" .) .Release.Namespace .Values.cluster.clusterDomain (int .Values.service.port) -}}
{{- end -}}

{{/* Checks of bridge.* that values.schema.json cannot express. */}}
{{- define "hsm.validateBridge" -}}
{{- if and .Values.bridge.enabled (not .Values.bridge.filesystems) -}}
{{- fail "bridge.enabled is true but bridge.filesystems is empty: list the file systems to serve" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.bridge.filesystems -}}
{{- $name := include "hsm.bridgeName" (dict "root" $ "fsname" .fsname) -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "bridge.filesystems: %s and %s would both be served by the Deployment %s" (get $seen $name) .fsname $name) -}}
{{- end -}}
{{- $_ := set $seen $name .fsname -}}
{{- end -}}
{{- end -}}

{{/* Mutual TLS: checks across tls.* and insecure. */}}
{{- define "hsm.validateTls" -}}
{{- $t := .Values.tls -}}
{{- if and $t.enabled .Values.insecure -}}
{{- fail "insecure: true and tls.enabled: true both given; set tls.enabled: false to run plain text, or drop insecure" -}}
{{- end -}}
{{- if and (not $t.enabled) (not .Values.insecure) -}}
{{- fail "tls.enabled is false: plain text needs the explicit insecure: true (anyone reaching the API port could then do anything)" -}}
{{- end -}}
{{- if $t.enabled -}}
{{- if $t.certManager.enabled -}}
{{- if not $t.certManager.issuerRef.name -}}
{{- fail "tls.certManager.enabled: name the Issuer or ClusterIssuer in tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and .Values.agentd.enabled (not $t.certManager.agentNodes) -}}
{{- fail "tls.certManager.enabled with agentd.enabled: list the mover nodes in tls.certManager.agentNodes (a Certificate per agent id)" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.agentd.enabled (ne .Values.agentd.kind "DaemonSet") -}}
{{- fail "tls.enabled: agentd.kind Deployment gives agents random pod names, which no certificate can name; use kind DaemonSet (agent id = node name)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of the Secret cert-manager writes for identity .name (a dict with root and name). */}}
{{- define "hsm.certSecret" -}}
{{- printf "%s-tls-%s" (include "hsm.fullname" .root) .name | trunc 253 -}}
{{- end -}}

{{/* The coordinators' TLS volume source: ca.pem and <replica>.pem/.key for every replica. */}}
{{- define "hsm.coordinatorTlsVolume" -}}
{{- $full := include "hsm.fullname" . -}}
{{- if .Values.tls.certManager.enabled }}
projected:
  defaultMode: 288
  sources:
    {{- range $i := until (int .Values.coordinator.replicas) }}
    {{- $id := printf "%s-%d" $full $i }}
    - secret:
        name: {{ include "hsm.certSecret" (dict "root" $ "name" $id) }}
        items:
          {{- if eq $i 0 }}
          - key: ca.crt
            path: ca.pem
          {{- end }}
          - key: tls.crt
            path: {{ $id }}.pem
          - key: tls.key
            path: {{ $id }}.key
    {{- end }}
{{- else }}
secret:
  secretName: {{ include "hsm.tlsSecret" (dict "root" . "name" .Values.tls.existingSecret "suffix" "tls") }}
  # 0440: readable by the coordinator's group (fsGroup)
  defaultMode: 288
{{- end }}
{{- end -}}

{{/* The client Service's DNS names, for the replicas' certificates. */}}
{{- define "hsm.serviceNames" -}}
{{- $full := include "hsm.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $full (printf "%s.%s" $full $ns) (printf "%s.%s.svc" $full $ns) (printf "%s.%s.svc.%s" $full $ns .Values.cluster.clusterDomain) | join "," -}}
{{- end -}}

{{/* A TLS Secret's name: the value given, else <fullname>-<suffix> (a dict with root, name, suffix). */}}
{{- define "hsm.tlsSecret" -}}
{{- default (printf "%s-%s" (include "hsm.fullname" .root) .suffix) .name -}}
{{- end -}}

{{/*
cluster.replication and cluster.placementReplicas: checks values.schema.json
cannot express (it checks each value alone, and that the replica count is
odd without replication). Included by the ConfigMap, before the placement
is computed.
*/}}
{{- define "hsm.validateReplication" -}}
{{- $r := .Values.cluster.replication -}}
{{- $p := .Values.cluster.placementReplicas -}}
{{- $n := int .Values.coordinator.replicas -}}
{{- if kindIs "invalid" $r -}}
{{- if not (kindIs "invalid" $p) -}}
{{- fail (printf "cluster.placementReplicas %d is set without cluster.replication: set both (groups of cluster.replication members placed over the first cluster.placementReplicas pods) or neither (every replica holds every shard)" (int $p)) -}}
{{- end -}}
{{- else -}}
{{- if kindIs "invalid" $p -}}
{{- fail (printf "cluster.replication %d needs cluster.placementReplicas: the number of pods the placement is spread over, usually coordinator.replicas at install (%d), and never changed afterwards (a placement recomputed over more pods would give shards to new pods that hold none of their data)" (int $r) $n) -}}
{{- end -}}
{{- if lt $n (int $r) -}}
{{- fail (printf "coordinator.replicas %d is fewer than cluster.replication %d: each shard's Raft group needs %d pods" $n (int $r) (int $r)) -}}
{{- end -}}
{{- if lt (int $p) (int $r) -}}
{{- fail (printf "cluster.placementReplicas %d is fewer than cluster.replication %d: each shard's group needs %d distinct pods to be placed on" (int $p) (int $r) (int $r)) -}}
{{- end -}}
{{- if gt (int $p) $n -}}
{{- fail (printf "cluster.placementReplicas %d is more than coordinator.replicas %d: the placement would name pods that do not exist (keep at least %d pods; to retire pods, drain the highest ordinals and scale down to no fewer than cluster.placementReplicas)" (int $p) $n (int $p)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
With cluster.replication: each shard's Raft group, as a JSON list (shard by
shard) of its members' pod ordinals, the preferred leader first. It is
coordinator.placement.spread, the function "hsm-coordinator init
--replication R" uses, over pods 0 .. placementReplicas-1: shard i prefers
pod i mod P as its leader; its other members are the pods holding the fewest
groups so far (the groups each pod is to lead counted in), the nearest after
the leader first. So every pod holds S x R / P groups and leads S / P of them,
each within one. It depends only on (shards, replication, placementReplicas):
pods added later are in no group.
*/}}
{{- define "hsm.placement" -}}
{{- $s := int .Values.cluster.shards -}}
{{- $r := int .Values.cluster.replication -}}
{{- $p := int .Values.cluster.placementReplicas -}}
{{- $held := dict -}}
{{- range $k := until $p -}}
{{- $_ := set $held (toString $k) 0 -}}
{{- end -}}
{{- range $i := until $s -}}
{{- $k := toString (mod $i $p) -}}
{{- $_ := set $held $k (add1 (get $held $k)) -}}
{{- end -}}
{{- $out := list -}}
{{- range $i := until $s -}}
{{- $leader := mod $i $p -}}
{{- $members := list $leader -}}
{{- range $round := until (sub $r 1 | int) -}}
{{- $best := -1 -}}
{{- $bestKey := 0 -}}
{{- range $d := untilStep 1 $p 1 -}}
{{- $m := mod (add $leader $d) $p -}}
{{- if not (has $m $members) -}}
{{- /* the least (groups held, distance after the leader) first */ -}}
{{- $key := add (mul (get $held (toString $m)) $p) $d -}}
{{- if or (lt (int $best) 0) (lt (int $key) (int $bestKey)) -}}
{{- $best = $m -}}
{{- $bestKey = $key -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $members = append $members $best -}}
{{- $_ := set $held (toString $best) (add1 (get $held (toString $best))) -}}
{{- end -}}
{{- $out = append $out $members -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}
