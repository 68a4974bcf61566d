# mattn: library, command-line tool, tests and benchmarks.
#   make            library (static + shared) and the mattn command
#   make test       the whole cmocka suite under mpirun at 1-4 ranks
#   make sanitize   the suite built with AddressSanitizer + UBSan
#   make bench      benchmarks (figures go to docs/benchmarks.md by hand)
#   make run        the main job on the built-in default problem
#   make install    PREFIX=/usr/local DESTDIR= (headers, libs, mattn.pc, mattn)
# V=1 shows the commands.

PREFIX ?= /usr/local
DESTDIR ?=
BUILD ?= build
CC = mpicc
V ?= 0
Q = $(if $(filter 1,$(V)),,@)

VERSION := $(shell sed -n 's/^\#define MATTN_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)/\2/p' include/mattn/version.h | paste -sd.)
# soname: MAJOR.MINOR while MAJOR is 0, MAJOR after (see include/mattn/version.h).
VERSION_WORDS := $(subst ., ,$(VERSION))
SOVERSION := $(if $(filter 0,$(word 1,$(VERSION_WORDS))),$(word 1,$(VERSION_WORDS)).$(word 2,$(VERSION_WORDS)),$(word 1,$(VERSION_WORDS)))

# Evaluated when a recipe runs, i.e. after `launch/setup` installed OpenBLAS.
BLAS_CFLAGS = $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS = $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)

OPT ?= -O3 -g
SAN ?=
CFLAGS_ALL = -std=c11 -D_GNU_SOURCE $(OPT) $(SAN) -Wall -Wextra -Werror -fPIC \
             -fopenmp -fvisibility=hidden -MMD -MP -Iinclude -Isrc $(BLAS_CFLAGS) $(CFLAGS)
LDLIBS_ALL = $(SAN) -fopenmp $(BLAS_LIBS) -lm -lpthread $(LDLIBS)

LIB_SRC := $(sort $(wildcard src/core/*.c src/kernels/*.c src/ops/*.c src/mesh/*.c \
                              src/ring/*.c src/decode/*.c))
# The command's code minus main() is linked into tests too, so the CLI is
# tested in-process.
CLI_SRC := $(filter-out src/cli/main.c,$(sort $(wildcard src/cli/*.c)))
TEST_COMMON_SRC := $(sort $(wildcard mpi_tests/common/*.c))
TEST_SRC := $(sort $(wildcard mpi_tests/test_*.c))
BENCH_SRC := $(sort $(wildcard bench/bench_*.c))

LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
CLI_MAIN_OBJ := $(BUILD)/obj/src/cli/main.o
TEST_COMMON_OBJ := $(TEST_COMMON_SRC:%.c=$(BUILD)/obj/%.o)
TEST_BIN := $(TEST_SRC:mpi_tests/%.c=$(BUILD)/tests/%)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

STATIC := $(BUILD)/libmattn.a
SHARED := $(BUILD)/libmattn.so.$(VERSION)
CLI := $(BUILD)/mattn

.SECONDARY:
.PHONY: all lib test tests sanitize bench run install uninstall clean
all: lib $(CLI) $(BUILD)/mattn.pc
lib: $(STATIC) $(SHARED)

# Per-file instruction sets: these files are only entered after a CPU check.
$(BUILD)/obj/src/kernels/vecmath_avx2.o: CFLAGS_ALL += -mavx2 -mfma
$(BUILD)/obj/src/kernels/vecmath_avx512.o: CFLAGS_ALL += -mavx512f -mavx512dq -mavx512vl -mfma
$(BUILD)/obj/src/decode/decode_ops_avx2.o: CFLAGS_ALL += -mavx2 -mfma
$(BUILD)/obj/src/decode/decode_ops_avx512.o: CFLAGS_ALL += -mavx512f -mavx512dq -mavx512vl -mfma

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS_ALL) -DMATTN_BUILDING -c $< -o $@

$(STATIC): $(LIB_OBJ)
	@$(if $(Q),echo "  AR      $@")
	$(Q)rm -f $@ && ar rcs $@ $^

$(SHARED): $(LIB_OBJ)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -shared -Wl,-soname,libmattn.so.$(SOVERSION) -o $@ $^ $(LDLIBS_ALL)
	$(Q)ln -sf libmattn.so.$(VERSION) $(BUILD)/libmattn.so.$(SOVERSION)
	$(Q)ln -sf libmattn.so.$(SOVERSION) $(BUILD)/libmattn.so

$(CLI): $(CLI_MAIN_OBJ) $(CLI_OBJ) $(STATIC)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -o $@ $(CLI_MAIN_OBJ) $(CLI_OBJ) $(STATIC) $(LDLIBS_ALL)

$(BUILD)/tests/%: $(BUILD)/obj/mpi_tests/%.o $(TEST_COMMON_OBJ) $(CLI_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -o $@ $< $(TEST_COMMON_OBJ) $(CLI_OBJ) $(STATIC) -lcmocka $(LDLIBS_ALL)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(CLI_OBJ) $(STATIC)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) -o $@ $< $(CLI_OBJ) $(STATIC) $(LDLIBS_ALL)

$(BUILD)/mattn.pc: mattn.pc.in include/mattn/version.h
	@mkdir -p $(dir $@)
	$(Q)sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

# Every public header compiles on its own, whichever a user includes first.
PUBLIC_HEADERS := $(wildcard include/mattn.h include/mattn/*.h)
$(BUILD)/headers.ok: $(PUBLIC_HEADERS)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CHECK   public headers")
	$(Q)for h in $(PUBLIC_HEADERS:include/%=%); do \
	    printf '#include "%s"\nint main(void) { return 0; }\n' $$h | \
	    $(CC) -std=c11 -Wall -Wextra -Wpedantic -Werror -Iinclude -fsyntax-only -x c - || \
	    { echo "public header $$h does not compile on its own" >&2; exit 1; }; done
	$(Q)touch $@

tests: $(TEST_BIN) $(CLI) $(BUILD)/headers.ok

# The whole suite: every test program under mpirun at 1, 2, 3 and 4 ranks.
test: tests
	$(Q)BUILD=$(BUILD) mpi_tests/run-all

# The suite under AddressSanitizer + UBSan (+ LeakSanitizer), in its own build
# tree; see mpi_tests/sanitize/ for why a dlclose shim is preloaded.
sanitize:
	@mkdir -p build-san
	$(Q)gcc -shared -fPIC -o build-san/keep_dlopen.so mpi_tests/sanitize/keep_dlopen.c
	$(Q)SANITIZE=1 $(MAKE) --no-print-directory BUILD=build-san OPT="-O1 -g -fno-omit-frame-pointer" \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined" test

bench: $(BENCH_BIN) $(CLI)
	$(Q)BUILD=$(BUILD) bench/run-all

run: all
	$(Q)launch/mattn-job

install: all
	install -d $(DESTDIR)$(PREFIX)/include/mattn $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 include/mattn.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 include/mattn/*.h $(DESTDIR)$(PREFIX)/include/mattn/
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libmattn.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libmattn.so.$(SOVERSION)
	ln -sf libmattn.so.$(SOVERSION) $(DESTDIR)$(PREFIX)/lib/libmattn.so
	install -m 644 $(BUILD)/mattn.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/
	install -m 755 $(CLI) $(DESTDIR)$(PREFIX)/bin/
	install -m 755 launch/mattn-mpirun $(DESTDIR)$(PREFIX)/bin/

uninstall:
	rm -rf $(DESTDIR)$(PREFIX)/include/mattn.h $(DESTDIR)$(PREFIX)/include/mattn \
	      $(DESTDIR)$(PREFIX)/lib/libmattn.* $(DESTDIR)$(PREFIX)/lib/pkgconfig/mattn.pc \
	      $(DESTDIR)$(PREFIX)/bin/mattn $(DESTDIR)$(PREFIX)/bin/mattn-mpirun

clean:
	rm -rf build build-san

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
