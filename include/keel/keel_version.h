/*
 * keel_version.h — the version of the Keel headers a program is compiled against.
 *
 * keel.h includes it; keel_version() (keel.h) gives the version of the library actually
 * loaded. The C ABI and the plugin ABIs are compatible within one major version and, while
 * the major version is 0, within one minor version: that is the SONAME's version
 * (libkeel.so.0.MINOR now, libkeel.so.MAJOR from 1.0 on).
 *
 * Kept equal to Cargo.toml's and CMakeLists.txt's version (tests/suite/packaging.rs).
 * Plain C99 (preprocessor definitions only).
 */
#ifndef KEEL_VERSION_H
#define KEEL_VERSION_H

#define KEEL_VERSION_MAJOR 0
#define KEEL_VERSION_MINOR 1
#define KEEL_VERSION_PATCH 0
/** The version as one number: MAJOR * 10000 + MINOR * 100 + PATCH (compare with >=). */
#define KEEL_VERSION_NUMBER (KEEL_VERSION_MAJOR * 10000 + KEEL_VERSION_MINOR * 100 + KEEL_VERSION_PATCH)
#define KEEL_VERSION_STRING "0.1.0"

#endif /* KEEL_VERSION_H */
