# Go stubs for the flux_api.v1 contract, and an example program that uses them.
# Included by the top Makefile, like clients/java/java.mk. Everything comes from Debian packages
# (no module proxy): protoc with protoc-gen-go and protoc-gen-go-grpc generates the code into a
# GOPATH under clients/go/build/, and go builds the example in GOPATH mode against the packaged
# grpc-go, protobuf-go and genproto sources in /usr/share/gocode.

GO_DIR     := clients/go
GO_BUILD   := $(GO_DIR)/build
GO_PATH    := $(abspath $(GO_BUILD))/gopath
# The import path of the generated package: the go_package option of protos/flux_api/v1/*.proto.
GO_API     := flux.vectors/api/flux_api/v1
GO_STUBS   := $(GO_PATH)/src/$(GO_API)/.built
GO_EXAMPLE := $(GO_BUILD)/flux-example

# golang-goprotobuf-dev (github.com/golang/protobuf 1.3) conflicts with protoc-gen-go 1.28 in Debian;
# golang-github-golang-protobuf-1-5-dev is its successor that grpc-go and genproto accept.
GO_DEBS := golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev golang-google-protobuf-dev \
	golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler libprotobuf-dev
go_env := GO111MODULE=off GOPATH=$(GO_PATH):/usr/share/gocode GOCACHE=$(abspath $(GO_BUILD))/cache GOFLAGS=

go_missing = $(shell for p in $(GO_DEBS); do \
	dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done)

.PHONY: go go-deps go-build go-missing go-example go-clean go-golden go-golden-program

go: go-deps ## install the Go toolchain (Debian packages) and build the Go stubs and example
	@$(MAKE) --no-print-directory go-build

go-deps: ## install the Debian packages the Go build needs, when any is missing (apt-get, as root)
	@missing="$(go_missing)"; \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "go-deps: run as root, or: sudo apt-get install $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

go-build: $(GO_EXAMPLE) ## build the Go stubs and the example (the packages must be installed)

go-missing: ## print the Debian packages the Go build needs that are not installed (nothing: ready)
	@echo "$(go_missing)"

go-example: ## print the path of the built example program
	@echo "$(abspath $(GO_EXAMPLE))"

$(GO_STUBS): $(PROTOS) $(GO_DIR)/go.mk
	rm -rf $(GO_PATH)/src/flux.vectors
	mkdir -p $(GO_PATH)/src
	protoc -Iprotos -I/usr/include --go_out=$(GO_PATH)/src --go-grpc_out=$(GO_PATH)/src $(PROTOS)
	@touch $@

$(GO_EXAMPLE): $(GO_STUBS) $(wildcard $(GO_DIR)/example/*.go)
	cd $(GO_DIR)/example && $(go_env) go vet . && $(go_env) go build -o $(abspath $@) .

# The golden replay (clients/go/golden): protos/examples/ replayed with the generated types and protojson.
GO_GOLDEN := $(GO_BUILD)/flux-golden

go-golden: $(GO_GOLDEN) ## build the golden replay of protos/examples/ (the packages must be installed)

go-golden-program: ## print the path of the built golden replay (flux-golden TARGET EXAMPLES)
	@echo "$(abspath $(GO_GOLDEN))"

$(GO_GOLDEN): $(GO_STUBS) $(wildcard $(GO_DIR)/golden/*.go)
	cd $(GO_DIR)/golden && $(go_env) go vet . && $(go_env) go build -o $(abspath $@) .

go-clean: ## remove clients/go/build
	chmod -R u+w $(GO_BUILD) 2>/dev/null || true
	rm -rf $(GO_BUILD)
