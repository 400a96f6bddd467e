/* Link-time shim for the sanitizer soak builds (tests/soak.sh, modes asan/tsan/c-asan).
 *
 * wasmer-vm's libcall table takes the address of the soft-float negation helpers
 * `__negsf2` / `__negdf2`. The prebuilt Rust std ships them in its compiler_builtins
 * (built with compiler-rt's C sources), but the compiler_builtins that `-Zbuild-std`
 * rebuilds from source on this nightly does not, so the sanitized test binaries fail to
 * link. x86_64 never calls them (negation is one SSE xor), so these definitions only
 * satisfy the reference; they are linked into the sanitized soak builds and nowhere else. */
float __negsf2(float a);
double __negdf2(double a);

float __negsf2(float a) { return -a; }
double __negdf2(double a) { return -a; }
