// no_entry.so: a shared library without the entry symbol; the loader must reject it naming the symbol.
extern "C" __attribute__((visibility("default"))) int some_other_function() { return 42; }
