/*
 * keel_error.hpp — keel::Error, the one exception type of Keel's C++ headers (keel.hpp and
 * themis_adapter.hpp): a std::runtime_error carrying the keel_status code (status()).
 * Header-only over keel/keel.h; included by both, so a program may use both.
 */
#ifndef KEEL_ERROR_HPP
#define KEEL_ERROR_HPP

#include <keel/keel.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace keel {

/** The symbolic name of a status ("KEEL_ERR_DIGEST_MISMATCH"); "KEEL_ERR_UNKNOWN" for a
 *  number that is not a keel_status. Thread-safe, noexcept. */
inline std::string_view status_name(keel_status status) noexcept {
    const char *name = nullptr;
    if (keel_status_name(static_cast<std::uint32_t>(status), &name) != KEEL_OK || name == nullptr) {
        return "KEEL_ERR_UNKNOWN";
    }
    return name;
}

/** Every failure of this API: a std::runtime_error with the keel_status code. what() is
 *  "<status name> (<code>): <message>" (Keel's message for the calling thread's failure). */
class Error : public std::runtime_error {
public:
    Error(keel_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
    /** An error for `status` with `message`, formatted as Keel formats its own. */
    static Error with_message(keel_status status, std::string_view message) {
        return Error(status, std::string(status_name(status)) + " (" +
                                 std::to_string(static_cast<std::uint32_t>(status)) + "): " + std::string(message));
    }
    /** Throw the calling thread's last Keel error for `s` (nothing when `s` is KEEL_OK). */
    static void check(keel_status s) {
        if (s == KEEL_OK) {
            return;
        }
        const char *msg = nullptr;
        if (keel_last_error_message(&msg) != KEEL_OK || msg == nullptr) {
            msg = "";
        }
        // Keel's message ends with " [<status name>]"; what() names the status up front already.
        std::string_view m(msg);
        const std::string suffix = " [" + std::string(status_name(s)) + "]";
        if (m.size() >= suffix.size() && m.substr(m.size() - suffix.size()) == suffix) {
            m.remove_suffix(suffix.size());
        }
        throw with_message(s, m);
    }
    keel_status status() const noexcept { return status_; }

private:
    keel_status status_;
};

} // namespace keel

#endif // KEEL_ERROR_HPP
