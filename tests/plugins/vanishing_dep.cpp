// libvanishing_dep.so: a library that missing_dep.so needs, built where the loader does not look.
extern "C" __attribute__((visibility("default"))) int vanishing_dep_value() { return 7; }
