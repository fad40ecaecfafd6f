/* A valid shared object that is not a relib module: no descriptor symbol. */
__attribute__((visibility("default"))) int add(int a, int b) { return a + b; }
