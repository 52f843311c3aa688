# Dependencies.cmake: finds the Debian packages lcluster links statically, so the binary
# needs no Lua or libuv library beside it. deps/install.sh installs them when missing.
include_guard(GLOBAL)

find_path(LUAJIT_INCLUDE_DIR luajit.h PATH_SUFFIXES luajit-2.1 REQUIRED)
find_library(LUAJIT_LIBRARY NAMES libluajit-5.1.a luajit-5.1 REQUIRED)
find_program(LUAJIT_EXECUTABLE luajit REQUIRED)

find_path(UV_INCLUDE_DIR uv.h REQUIRED)
find_library(UV_LIBRARY NAMES libuv_a.a libuv.a uv REQUIRED)

find_library(CJSON_LIBRARY NAMES liblua5.1-cjson.a REQUIRED)

# lua-luv-dev: the libuv binding behind require('luv'), built against the Lua 5.1 API that
# LuaJIT provides; linked before libuv, whose symbols it uses.
find_path(LUV_INCLUDE_DIR luv.h PATH_SUFFIXES lua5.1/luv REQUIRED)
find_library(LUV_LIBRARY NAMES liblua5.1-luv.a REQUIRED)

find_path(HTTP_PARSER_INCLUDE_DIR http_parser.h REQUIRED)
find_library(HTTP_PARSER_LIBRARY NAMES libhttp_parser.a http_parser REQUIRED)

find_package(Threads REQUIRED)

add_library(lc_deps INTERFACE)
target_include_directories(lc_deps INTERFACE ${LUAJIT_INCLUDE_DIR} ${UV_INCLUDE_DIR}
                                             ${HTTP_PARSER_INCLUDE_DIR} ${LUV_INCLUDE_DIR})
target_link_libraries(lc_deps INTERFACE ${CJSON_LIBRARY} ${LUV_LIBRARY} ${LUAJIT_LIBRARY} ${UV_LIBRARY}
                                        ${HTTP_PARSER_LIBRARY} Threads::Threads ${CMAKE_DL_LIBS} m)
