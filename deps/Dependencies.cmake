# Dependencies.cmake: finds the Debian packages lcluster links statically, so the binary
# needs no Lua or libuv library beside it. deps/install.sh installs them when missing.
include_guard(GLOBAL)

find_path(LUAJIT_INCLUDE_DIR luajit.h PATH_SUFFIXES luajit-2.1 REQUIRED)
find_library(LUAJIT_LIBRARY NAMES libluajit-5.1.a luajit-5.1 REQUIRED)
find_program(LUAJIT_EXECUTABLE luajit REQUIRED)

find_path(UV_INCLUDE_DIR uv.h REQUIRED)
find_library(UV_LIBRARY NAMES libuv_a.a libuv.a uv REQUIRED)

# lua-cjson: Debian's archive holds lua_cjson.o, fpconv.o and strbuf.o. The binary links a
# copy of it without fpconv.o (runtime/fpconv.c defines those three functions) and with
# lua_cjson.o's calls to lua_createtable, lua_rawset, lua_rawseti and strbuf_new renamed to
# runtime/cjson.c's wrappers, which size the tables cjson.decode fills (see both files).
find_library(CJSON_ARCHIVE NAMES liblua5.1-cjson.a REQUIRED)
set(LC_CJSON_DIR ${CMAKE_BINARY_DIR}/lua-cjson)
set(CJSON_LIBRARY ${LC_CJSON_DIR}/liblc-cjson.a)
add_custom_command(
  OUTPUT ${CJSON_LIBRARY}
  COMMAND ${CMAKE_COMMAND} -E rm -f lua_cjson.o strbuf.o ${CJSON_LIBRARY}
  COMMAND ${CMAKE_AR} x ${CJSON_ARCHIVE} lua_cjson.o strbuf.o
  COMMAND ${CMAKE_OBJCOPY} --redefine-sym lua_createtable=lc_cjson_createtable
          --redefine-sym lua_rawset=lc_cjson_rawset --redefine-sym lua_rawseti=lc_cjson_rawseti
          --redefine-sym strbuf_new=lc_cjson_strbuf_new lua_cjson.o
  COMMAND ${CMAKE_AR} rcs ${CJSON_LIBRARY} lua_cjson.o strbuf.o
  DEPENDS ${CJSON_ARCHIVE}
  WORKING_DIRECTORY ${LC_CJSON_DIR}
  COMMENT "lua-cjson: lua_cjson.o's table and buffer calls renamed (runtime/cjson.c)")
file(MAKE_DIRECTORY ${LC_CJSON_DIR})
add_custom_target(lc_cjson_archive DEPENDS ${CJSON_LIBRARY})

# lua-luv-dev: the libuv binding behind require('luv'), built against the Lua 5.1 API that
# LuaJIT provides; linked before libuv, whose symbols it uses.
find_path(LUV_INCLUDE_DIR luv.h PATH_SUFFIXES lua5.1/luv REQUIRED)
find_library(LUV_LIBRARY NAMES liblua5.1-luv.a REQUIRED)

# llhttp (Node's HTTP parser): Debian's node-llhttp ships its generated C sources and header,
# not a library, so they are compiled into the binary here (nothing vendored in the repo).
find_path(LLHTTP_INCLUDE_DIR llhttp.h PATHS /usr/share/include/llhttp REQUIRED)
find_path(LLHTTP_SOURCE_DIR llhttp.c PATHS /usr/share/llhttp NO_DEFAULT_PATH REQUIRED)
add_library(lc_llhttp STATIC ${LLHTTP_SOURCE_DIR}/api.c ${LLHTTP_SOURCE_DIR}/http.c
                             ${LLHTTP_SOURCE_DIR}/llhttp.c)
target_include_directories(lc_llhttp PUBLIC ${LLHTTP_INCLUDE_DIR})
# Strict mode: the generated parser's strict variant, which checks the CRLF after chunk data
# (the lenient one skips any two bytes there: a smuggling vector) and is stricter on header
# characters. Generated code, not ours: no warning set; -O2 even in Debug (the hot path).
target_compile_definitions(lc_llhttp PRIVATE LLHTTP_STRICT_MODE=1)
target_compile_options(lc_llhttp PRIVATE -w -O2)
set_target_properties(lc_llhttp PROPERTIES POSITION_INDEPENDENT_CODE ON)

# TLS (runtime/tlsmod/tls.c): OpenSSL 3 from libssl-dev, linked statically into the TLS
# module (CMakeLists.txt, target lctls), never into the binary itself: the shared libcrypto
# costs every process a few ms of symbol binding at start-up (Debian links it with -z now),
# and a static copy in the binary ~1 MB of RSS, whether the process uses TLS or not.
set(OPENSSL_USE_STATIC_LIBS TRUE)
find_package(OpenSSL 3 REQUIRED)

find_package(Threads REQUIRED)

add_library(lc_deps INTERFACE)
add_dependencies(lc_deps lc_cjson_archive)
target_include_directories(lc_deps INTERFACE ${LUAJIT_INCLUDE_DIR} ${UV_INCLUDE_DIR}
                                             ${LLHTTP_INCLUDE_DIR} ${LUV_INCLUDE_DIR})
target_link_libraries(lc_deps INTERFACE ${CJSON_LIBRARY} ${LUV_LIBRARY} ${LUAJIT_LIBRARY} ${UV_LIBRARY}
                                        lc_llhttp Threads::Threads ${CMAKE_DL_LIBS} m)
