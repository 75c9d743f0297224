#!/bin/sh
# The namespace and this project's search attributes
# (workflows/search_attributes.py), registered once the server answers.
# Safe to repeat: an existing namespace is kept, and registering a search
# attribute again changes nothing.
set -eu
: "${TEMPORAL_ADDRESS:?}" "${TEMPORAL_NAMESPACE:?}"

until temporal operator cluster health >/dev/null 2>&1; do
  echo "waiting for Temporal at $TEMPORAL_ADDRESS"
  sleep 2
done

temporal operator namespace describe --namespace "$TEMPORAL_NAMESPACE" >/dev/null 2>&1 ||
  temporal operator namespace create --namespace "$TEMPORAL_NAMESPACE" --retention 168h

for attribute in OrderStatus:Keyword CustomerId:Keyword CustomerPhase:Keyword NeedsAttention:Bool CaseStatus:Keyword CaseOwner:Keyword; do
  temporal operator search-attribute create --namespace "$TEMPORAL_NAMESPACE" \
    --name "${attribute%%:*}" --type "${attribute#*:}"
done

# Frontend and history read namespaces (and so the attributes' aliases) from a
# cache refreshed every 10 s: wait it out, so the first order started with
# its attributes is not refused.
sleep 12
echo "namespace $TEMPORAL_NAMESPACE ready"
