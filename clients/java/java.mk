# Java stubs for the flux_api.v1 contract, and an example program that uses them.
# Included by the top Makefile. Everything comes from Debian packages (no Maven Central):
# protoc and the grpc-java plugin generate the code, javac compiles it against the
# packaged protobuf-java and grpc-java jars. Output goes to clients/java/build/: the stubs
# jar, a companion jar of the google.rpc messages (error details), a pom for each.

JAVA_DIR     := clients/java
JAVA_BUILD   := $(JAVA_DIR)/build
# The stubs are versioned like the contract: the newest release in protos/CHANGELOG.md.
JAVA_VERSION := $(shell sed -n 's/^## \([0-9][0-9.]*\).*/\1/p' protos/CHANGELOG.md 2>/dev/null | head -n 1)
JAVA_JAR     := $(JAVA_BUILD)/flux-api-$(JAVA_VERSION).jar
JAVA_POM     := $(JAVA_BUILD)/flux-api-$(JAVA_VERSION).pom
# google.rpc (Status, ErrorInfo, BadRequest, ...), which error details need: Debian's grpc-java has no
# proto-google-common-protos with ErrorInfo, so they are generated from googleapis' protos (shipped in
# .venv by googleapis-common-protos) into a jar of their own, which Maven users leave out.
RPC_JAR      := $(JAVA_BUILD)/flux-api-google-rpc-$(JAVA_VERSION).jar
RPC_POM      := $(JAVA_BUILD)/flux-api-google-rpc-$(JAVA_VERSION).pom
RPC_PROTOS   := google/rpc/status.proto google/rpc/code.proto google/rpc/error_details.proto
rpc_proto_root = $(shell $(BIN)/python -c 'import pathlib, google.rpc; print(pathlib.Path(list(google.rpc.__path__)[0]).parents[1])')
JAVA_HEALTH  := $(JAVA_BUILD)/health/classes
JAVA_EXAMPLE := $(JAVA_BUILD)/example/.built
JAVA_RELEASE := 8

# maven and its install plugin only install the jars into a Maven repository (tests/test_java_client.py);
# gson is what protobuf-util's JsonFormat (in libprotobuf-java) parses with: the golden replay needs it.
JAVA_DEBS := openjdk-17-jdk-headless protobuf-compiler libprotobuf-dev libprotobuf-java libgrpc-java \
	protobuf-compiler-grpc-java-plugin libgeronimo-annotation-1.3-spec-java libnetty-java libperfmark-java grpc-proto \
	maven libmaven-install-plugin-java libgoogle-gson-java
JAVA_SHARE := /usr/share/java
GRPC_JAVA_PLUGIN := /usr/bin/grpc_java_plugin
# protobuf's well-known types (google/protobuf/struct.proto) come with libprotobuf-dev.
PROTOC_INCLUDE := /usr/include
GRPC_PROTO_ROOT := /usr/share/grpc-proto
HEALTH_PROTO := $(GRPC_PROTO_ROOT)/grpc/health/v1/health.proto

# Compiling generated code needs protobuf, grpc-stub/-protobuf, guava and javax.annotation;
# running a client adds grpc-core, the Netty transport and perfmark.
JAVA_COMPILE_JARS := protobuf grpc-api grpc-stub grpc-protobuf grpc-protobuf-lite guava geronimo-annotation-1.3-spec
JAVA_RUNTIME_JARS := $(JAVA_COMPILE_JARS) grpc-context grpc-core grpc-netty perfmark-api \
	netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common netty-handler netty-resolver netty-transport
java_empty :=
java_space := $(java_empty) $(java_empty)
java_path = $(subst $(java_space),:,$(strip $(1)))
JAVA_COMPILE_CP := $(call java_path,$(patsubst %,$(JAVA_SHARE)/%.jar,$(JAVA_COMPILE_JARS)))
JAVA_RUNTIME_CP := $(call java_path,$(patsubst %,$(JAVA_SHARE)/%.jar,$(JAVA_RUNTIME_JARS)))

# The versions the poms name: those of the packaged jars the stubs are compiled and tested against.
java_jar_version = $(patsubst $(1)-%.jar,%,$(notdir $(firstword $(wildcard $(JAVA_SHARE)/$(1)-[0-9]*.jar))))
java_pom = sed -e 's/@VERSION@/$(JAVA_VERSION)/g' -e 's/@GRPC_VERSION@/$(call java_jar_version,grpc-stub)/g' \
	-e 's/@PROTOBUF_VERSION@/$(call java_jar_version,protobuf)/g'

java_missing = $(shell for p in $(JAVA_DEBS); do \
	dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done)

.PHONY: java java-deps java-build java-missing java-classpath java-version java-artifacts java-clean \
	java-golden java-golden-classpath

java: java-deps ## install the Java toolchain (Debian packages) and build the stubs jar and the example
	@$(MAKE) --no-print-directory java-build

java-deps: ## install the Debian packages the Java build needs, when any is missing (apt-get, as root)
	@missing="$(java_missing)"; \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "java-deps: run as root, or: sudo apt-get install $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

java-build: $(JAVA_JAR) $(JAVA_POM) $(RPC_JAR) $(RPC_POM) $(JAVA_EXAMPLE) ## build the jars, their poms and the example (the packages must be installed)

java-missing: ## print the Debian packages the Java build needs that are not installed (nothing: ready)
	@echo "$(java_missing)"

java-classpath: ## print the class path a program using the stubs runs with (jars, health stubs, grpc-java, Netty)
	@echo "$(abspath $(JAVA_JAR)):$(abspath $(RPC_JAR)):$(abspath $(JAVA_HEALTH)):$(JAVA_RUNTIME_CP)"

java-version: ## print the version of the stubs jar (the contract's, from protos/CHANGELOG.md)
	@echo "$(JAVA_VERSION)"

java-artifacts: ## print the jars and their poms, jar then pom, one pair a line (for mvn install:install-file)
	@echo "$(abspath $(JAVA_JAR)) $(abspath $(JAVA_POM))"
	@echo "$(abspath $(RPC_JAR)) $(abspath $(RPC_POM))"

$(JAVA_JAR): $(PROTOS) protos/CHANGELOG.md $(JAVA_DIR)/java.mk
	@test -n "$(JAVA_VERSION)" || { echo "no release heading (## X.Y.Z) in protos/CHANGELOG.md" >&2; exit 1; }
	@test -x $(GRPC_JAVA_PLUGIN) || { echo "$(GRPC_JAVA_PLUGIN) is missing: run make java" >&2; exit 1; }
	rm -rf $(JAVA_BUILD)/stubs $(JAVA_BUILD)/flux-api-[0-9]*.jar
	mkdir -p $(JAVA_BUILD)/stubs/src $(JAVA_BUILD)/stubs/classes
	protoc -Iprotos -I$(PROTOC_INCLUDE) --plugin=protoc-gen-grpc-java=$(GRPC_JAVA_PLUGIN) \
		--java_out=$(JAVA_BUILD)/stubs/src --grpc-java_out=$(JAVA_BUILD)/stubs/src $(PROTOS)
	javac -nowarn -Xlint:-options --release $(JAVA_RELEASE) -encoding UTF-8 -cp $(JAVA_COMPILE_CP) \
		-d $(JAVA_BUILD)/stubs/classes $$(find $(JAVA_BUILD)/stubs/src -name '*.java')
	printf 'Implementation-Title: flux-api\nImplementation-Version: %s\n' "$(JAVA_VERSION)" > $(JAVA_BUILD)/stubs/MANIFEST.MF
	mkdir -p $(JAVA_BUILD)/stubs/meta/META-INF/maven/io.flux/flux-api
	$(java_pom) $(JAVA_DIR)/maven/flux-api.pom.in > $(JAVA_BUILD)/stubs/meta/META-INF/maven/io.flux/flux-api/pom.xml
	printf 'groupId=io.flux\nartifactId=flux-api\nversion=%s\n' "$(JAVA_VERSION)" \
		> $(JAVA_BUILD)/stubs/meta/META-INF/maven/io.flux/flux-api/pom.properties
	jar --create --file $@ --manifest $(JAVA_BUILD)/stubs/MANIFEST.MF \
		-C $(JAVA_BUILD)/stubs/classes . -C protos flux_api -C $(JAVA_BUILD)/stubs/meta .

$(JAVA_POM): $(JAVA_DIR)/maven/flux-api.pom.in protos/CHANGELOG.md $(JAVA_DIR)/java.mk
	@mkdir -p $(JAVA_BUILD)
	rm -f $(JAVA_BUILD)/flux-api-[0-9]*.pom
	$(java_pom) $< > $@

# The google.rpc messages, generated and compiled like the stubs.
$(RPC_JAR): protos/CHANGELOG.md $(JAVA_DIR)/java.mk | $(VENV)/.installed
	rm -rf $(JAVA_BUILD)/rpc $(JAVA_BUILD)/flux-api-google-rpc-*.jar
	mkdir -p $(JAVA_BUILD)/rpc/src $(JAVA_BUILD)/rpc/classes $(JAVA_BUILD)/rpc/meta/META-INF/maven/io.flux/flux-api-google-rpc
	root="$(rpc_proto_root)"; test -f "$$root/google/rpc/error_details.proto" || \
		{ echo "google/rpc/*.proto not found in .venv (googleapis-common-protos): run make install" >&2; exit 1; }; \
	protoc -I"$$root" -I$(PROTOC_INCLUDE) --java_out=$(JAVA_BUILD)/rpc/src $(RPC_PROTOS) && \
	mkdir -p $(JAVA_BUILD)/rpc/protos/google/rpc && cp $(addprefix "$$root"/,$(RPC_PROTOS)) $(JAVA_BUILD)/rpc/protos/google/rpc/
	javac -nowarn -Xlint:-options --release $(JAVA_RELEASE) -encoding UTF-8 -cp $(JAVA_COMPILE_CP) \
		-d $(JAVA_BUILD)/rpc/classes $$(find $(JAVA_BUILD)/rpc/src -name '*.java')
	printf 'Implementation-Title: flux-api-google-rpc\nImplementation-Version: %s\n' "$(JAVA_VERSION)" > $(JAVA_BUILD)/rpc/MANIFEST.MF
	$(java_pom) $(JAVA_DIR)/maven/flux-api-google-rpc.pom.in > $(JAVA_BUILD)/rpc/meta/META-INF/maven/io.flux/flux-api-google-rpc/pom.xml
	jar --create --file $@ --manifest $(JAVA_BUILD)/rpc/MANIFEST.MF \
		-C $(JAVA_BUILD)/rpc/classes . -C $(JAVA_BUILD)/rpc/protos . -C $(JAVA_BUILD)/rpc/meta .

$(RPC_POM): $(JAVA_DIR)/maven/flux-api-google-rpc.pom.in protos/CHANGELOG.md $(JAVA_DIR)/java.mk
	@mkdir -p $(JAVA_BUILD)
	rm -f $(JAVA_BUILD)/flux-api-google-rpc-*.pom
	$(java_pom) $< > $@

# The example also needs the standard health-check stubs, which Debian's grpc-java lacks
# (Maven users get them from io.grpc:grpc-services); they stay out of the stubs jar.
$(JAVA_HEALTH)/.built: $(HEALTH_PROTO) $(JAVA_DIR)/java.mk
	rm -rf $(JAVA_BUILD)/health
	mkdir -p $(JAVA_BUILD)/health/src $(JAVA_HEALTH)
	protoc -I$(GRPC_PROTO_ROOT) --plugin=protoc-gen-grpc-java=$(GRPC_JAVA_PLUGIN) \
		--java_out=$(JAVA_BUILD)/health/src --grpc-java_out=$(JAVA_BUILD)/health/src $(HEALTH_PROTO)
	javac -nowarn -Xlint:-options --release $(JAVA_RELEASE) -encoding UTF-8 -cp $(JAVA_COMPILE_CP) \
		-d $(JAVA_HEALTH) $$(find $(JAVA_BUILD)/health/src -name '*.java')
	@touch $@

$(JAVA_EXAMPLE): $(JAVA_JAR) $(RPC_JAR) $(JAVA_HEALTH)/.built $(wildcard $(JAVA_DIR)/example/*.java)
	rm -rf $(JAVA_BUILD)/example
	mkdir -p $(JAVA_BUILD)/example
	javac -Xlint:all -Xlint:-options -Werror --release $(JAVA_RELEASE) -encoding UTF-8 \
		-cp $(JAVA_JAR):$(RPC_JAR):$(JAVA_HEALTH):$(JAVA_COMPILE_CP) -d $(JAVA_BUILD)/example $(JAVA_DIR)/example/*.java
	@touch $@

# The golden replay (clients/java/golden): protos/examples/ replayed with the generated types and JsonFormat.
JAVA_GOLDEN     := $(JAVA_BUILD)/golden/.built
JAVA_GOLDEN_CP  := $(JAVA_SHARE)/protobuf-util.jar:$(JAVA_SHARE)/gson.jar

java-golden: $(JAVA_GOLDEN) ## build the golden replay of protos/examples/ (the packages must be installed)

java-golden-classpath: ## print the class path the golden replay runs with (io.flux.golden.GoldenReplay TARGET EXAMPLES)
	@echo "$(abspath $(JAVA_BUILD)/golden):$(abspath $(JAVA_JAR)):$(abspath $(RPC_JAR)):$(JAVA_GOLDEN_CP):$(JAVA_RUNTIME_CP)"

$(JAVA_GOLDEN): $(JAVA_JAR) $(RPC_JAR) $(wildcard $(JAVA_DIR)/golden/*.java) $(JAVA_DIR)/java.mk
	rm -rf $(JAVA_BUILD)/golden
	mkdir -p $(JAVA_BUILD)/golden
	javac -Xlint:all -Xlint:-options -Werror --release $(JAVA_RELEASE) -encoding UTF-8 \
		-cp $(JAVA_JAR):$(RPC_JAR):$(JAVA_GOLDEN_CP):$(JAVA_COMPILE_CP) -d $(JAVA_BUILD)/golden $(JAVA_DIR)/golden/*.java
	@touch $@

java-clean: ## remove clients/java/build
	rm -rf $(JAVA_BUILD)
