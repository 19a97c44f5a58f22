// Start Swagger UI on the service's own OpenAPI contract. Kept out of the page so a strict
// Content-Security-Policy (script-src 'self') still allows it; nothing here reaches the internet.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    displayRequestDuration: true,
    // The default badge asks validator.swagger.io to judge the spec: hospitals have no internet.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
