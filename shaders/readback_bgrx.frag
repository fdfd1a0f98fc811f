// Copy a rectangle of a texture into the render target as BGRx, one texel per fragment.
//
// Fragment (x, y) of the target takes texel (u_origin.x + x, u_origin.y ± y): `+` for a
// top-down source, `-` (u_flip = 1, u_origin.y = last row of the rectangle) for a source stored
// bottom-up (QEMU's y0_top), so target row 0 is always the rectangle's top row. glReadPixels
// returns target row 0 first, so the CPU copy is top-down.
//
// The colour is written swizzled (b, g, r, 1) so that reading the RGBA8 target as
// GL_RGBA/GL_UNSIGNED_BYTE yields bytes B, G, R, 0xff: no CPU swizzle and no dependence on
// GL_EXT_read_format_bgra. texelFetch keeps the copy exact (no filtering, no coordinates in
// floating point).
//
// The GPU crate prepends `#version 300 es` and, for GL_TEXTURE_EXTERNAL_OES sources,
// `#define EXTERNAL_OES 1`.
#ifdef EXTERNAL_OES
#extension GL_OES_EGL_image_external_essl3 : require
uniform highp samplerExternalOES u_tex;
#else
uniform highp sampler2D u_tex;
#endif
precision highp float;
precision highp int;

uniform ivec2 u_origin;
uniform int u_flip;

out vec4 o_color;

void main() {
    ivec2 p = ivec2(gl_FragCoord.xy);
    int row = u_flip != 0 ? u_origin.y - p.y : u_origin.y + p.y;
    vec4 c = texelFetch(u_tex, ivec2(u_origin.x + p.x, row), 0);
    o_color = vec4(c.b, c.g, c.r, 1.0);
}
