// One triangle that covers the whole viewport; no vertex buffers (gl_VertexID 0..2).
// The GPU crate prepends `#version 300 es`.
void main() {
    vec2 p = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    gl_Position = vec4(p, 0.0, 1.0);
}
