// The C side of streaming callbacks: libtailor calls this with the const
// signature tailor.h declares, and it hands over to the exported Go function.
#include <tailor.h>

#include "_cgo_export.h"

int tailor_go_relay(const char *text, size_t len, void *user_data) {
  return goTokenRelay((char *)text, len, user_data);
}
