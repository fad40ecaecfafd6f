/* A valid shared object that is not a relib module and whose static
 * constructor has a visible effect: it creates the file named by
 * RELIB_TEST_CTOR_MARKER. relib must refuse it without running it. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void mark(void) {
  const char* path = getenv("RELIB_TEST_CTOR_MARKER");
  if (path == NULL) return;
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0) close(fd);
}

__attribute__((visibility("default"))) int sub(int a, int b) { return a - b; }
