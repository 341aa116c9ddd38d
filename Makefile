# envoisms — PGXS build of the extension, the gateway and every test suite.
# The version is set here once and stamped into the control file and the
# install script name.
EXTENSION   = envoisms
EXTVERSION  = 0.6.0

MODULE_big  = envoisms
# One concern per file (docs/design.md has the layers): every src/*.c, plus
# the C++ wrapper around libphonenumber.
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c))) src/phone_lib.o

# SQL parts are concatenated in name order (NN_area.sql) into the install script.
SQL_PARTS   = $(sort $(wildcard src/sql/*.sql))
DATA_built  = $(EXTENSION)--$(EXTVERSION).sql $(EXTENSION).control
# Released versions (upgrade/): the oldest one's install script and the
# upgrade scripts between each version and the next, all frozen; PostgreSQL
# installs any released version by walking that chain. The current
# version's script is generated.
DATA        = $(wildcard upgrade/$(EXTENSION)--*.sql)

PG_CONFIG  ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src
PG_CFLAGS   = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare -Wno-cast-function-type
PG_CXXFLAGS = -std=c++17 -Wall -Werror
SHLIB_LINK  = -lphonenumber -lgeocoding -licuuc -lstdc++ -lcrypto -lcurl -lsmpp34

# pg_regress suites (sql/, expected/) and isolation specs (test/isolation).
REGRESS         = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS    = --load-extension=$(EXTENSION)
ISOLATION       = $(patsubst test/isolation/specs/%.spec,%,$(sort $(wildcard test/isolation/specs/*.spec)))
ISOLATION_OPTS  = --inputdir=test/isolation --outputdir=test/isolation/results --load-extension=$(EXTENSION)

EXTRA_CLEAN = src/gateway/envoisms-gateway src/gateway/envoisms-openapi.json src/gateway/*.o test/isolation/results results regression.diffs regression.out

# No LLVM bitcode: a fresh machine need not have clang.
override with_llvm := no

# make SANITIZE=1: the extension and the gateway built with AddressSanitizer
# and UndefinedBehaviorSanitizer (ENVOISMS_SANITIZE=1 ./scripts/test.sh;
# docs/testing.md). postgres itself is not instrumented and must preload
# the ASan runtime to load this build.
# gcc's string-overread/overflow warnings misfire on instrumented code (it
# reasons about the redzones): -Werror stays, those two warnings go.
ifeq ($(SANITIZE),1)
SANITIZER_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer
SANITIZER_WARNINGS = -Wno-stringop-overread -Wno-stringop-overflow
PG_CFLAGS   += $(SANITIZER_FLAGS) $(SANITIZER_WARNINGS)
PG_CXXFLAGS += $(SANITIZER_FLAGS) $(SANITIZER_WARNINGS)
SHLIB_LINK  += $(SANITIZER_FLAGS)
endif

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: rebuild every object when a header changes.
$(OBJS): $(wildcard src/*.h)

$(EXTENSION)--$(EXTVERSION).sql: $(SQL_PARTS)
	{ echo "-- envoisms $(EXTVERSION): generated from src/sql/*.sql by make; do not edit"; \
	  printf '%s\n' '\echo Use "CREATE EXTENSION envoisms" to load this file. \quit'; \
	  for f in $(SQL_PARTS); do echo; echo "-- ---- $$f"; cat $$f; done; } > $@

$(EXTENSION).control: $(EXTENSION).control.in Makefile
	sed 's/@EXTVERSION@/$(EXTVERSION)/' $< > $@

src/phone_lib.o: src/phone_lib.cpp src/phone_lib.h
	$(CXX) $(CXXFLAGS) $(PG_CXXFLAGS) -fPIC -I$(srcdir)/src -c -o $@ $<

# ---- the gateway (src/gateway), built by the same make
GATEWAY_SRCS = $(sort $(wildcard src/gateway/*.c))
GATEWAY_OBJS = $(GATEWAY_SRCS:.c=.o)
GATEWAY_CFLAGS = -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter -pthread -I$(shell $(PG_CONFIG) --includedir)
# /v1/openapi.json serves docs/openapi.yaml, converted (and so checked) at build time.
GATEWAY_OPENAPI = $(shell $(PG_CONFIG) --sharedir)/extension/envoisms-openapi.json
# The web console's static files (console/), served by the gateway under /console/.
CONSOLE_DIR = $(shell $(PG_CONFIG) --sharedir)/envoisms-console
CONSOLE_FILES = $(sort $(shell find console -type f \( -name '*.html' -o -name '*.css' -o -name '*.js' -o -name '*.json' -o -name '*.svg' -o -name '*.txt' \) 2>/dev/null))
GATEWAY_CFLAGS += -DOPENAPI_PATH='"$(GATEWAY_OPENAPI)"' -DCONSOLE_DIR='"$(CONSOLE_DIR)"' -DGATEWAY_VERSION='"$(EXTVERSION)"'
GATEWAY_CFLAGS += $(SANITIZER_FLAGS) $(SANITIZER_WARNINGS)
OPENAPI_TO_JSON = perl -MYAML::XS -MJSON::PP -e '$$YAML::XS::Boolean = "JSON::PP"; \
	print JSON::PP->new->utf8->canonical->pretty->encode(YAML::XS::LoadFile($$ARGV[0]))'

src/gateway/%.o: src/gateway/%.c $(wildcard src/gateway/*.h) Makefile
	$(CC) $(GATEWAY_CFLAGS) -c -o $@ $<

src/gateway/envoisms-gateway: $(GATEWAY_OBJS)
	$(CC) -pthread $(SANITIZER_FLAGS) -o $@ $^ -L$(shell $(PG_CONFIG) --libdir) -lpq -lmicrohttpd

src/gateway/envoisms-openapi.json: docs/openapi.yaml
	$(OPENAPI_TO_JSON) $< > $@.tmp && mv $@.tmp $@

ifneq ($(GATEWAY_SRCS),)
all: src/gateway/envoisms-gateway src/gateway/envoisms-openapi.json
install: install-gateway install-console
endif

install-gateway: src/gateway/envoisms-gateway src/gateway/envoisms-openapi.json
	$(INSTALL_PROGRAM) src/gateway/envoisms-gateway '$(DESTDIR)$(bindir)/envoisms-gateway'
	$(INSTALL_DATA) src/gateway/envoisms-openapi.json '$(DESTDIR)$(GATEWAY_OPENAPI)'

# The console's tree as it is (stale files removed first, so a file deleted
# from console/ is not served after an upgrade).
install-console:
	rm -rf '$(DESTDIR)$(CONSOLE_DIR)'
	$(MKDIR_P) '$(DESTDIR)$(CONSOLE_DIR)'
	for f in $(CONSOLE_FILES); do \
	  $(MKDIR_P) "$(DESTDIR)$(CONSOLE_DIR)/$$(dirname $${f#console/})" && \
	  $(INSTALL_DATA) "$$f" "$(DESTDIR)$(CONSOLE_DIR)/$${f#console/}" || exit 1; \
	done

.PHONY: install-gateway install-console

# ---- libFuzzer harnesses (fuzz/, clang): built here, run by fuzz/run.sh
fuzz:
	$(MAKE) -C fuzz PG_CONFIG=$(PG_CONFIG)

clean: clean-fuzz
clean-fuzz:
	$(MAKE) -C fuzz clean

.PHONY: fuzz clean-fuzz
